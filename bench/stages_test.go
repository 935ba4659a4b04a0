package main

import (
	"testing"
	"time"
)

func TestParseStages(t *testing.T) {
	console := "SeaBIOS (version 1.16)\r\n" +
		"fcm-initrd: boot 1.23s initrd\r\n" +
		"fcm-initrd: boot 1.61s modules\n" +
		"[    1.700000] random kernel line\n" +
		"fcm-initrd: boot 1.80s root mounted\n" +
		"fcm-init: boot 2.4s started\n" +
		"fcm-init: boot 2.412s init\n" +
		"fcm-init: boot 2.5s network\n" +
		"fcm-init: boot 2.6s sshd started\n" +
		"fcm-init: boot 3.9s sshd listening\n" +
		"fcm-init: boot 9.9s init\n" // a later line of the same name is ignored
	got := parseStages(console)
	want := map[string]time.Duration{
		"initrd": 1230 * time.Millisecond, "modules": 1610 * time.Millisecond, "root mounted": 1800 * time.Millisecond,
		"started": 2400 * time.Millisecond, "init": 2412 * time.Millisecond, "network": 2500 * time.Millisecond, "sshd started": 2600 * time.Millisecond,
		"sshd listening": 3900 * time.Millisecond,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d stages %v, want %d", len(got), got, len(want))
	}
	for k, w := range want {
		if d := got[k] - w; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("%s: got %v, want %v", k, got[k], w)
		}
	}
	s := bootSample{stages: got, kernelStart: 500 * time.Millisecond, banner: 4600 * time.Millisecond}
	share, ok := fcmShare(s)
	if !ok || share-1370*time.Millisecond > time.Microsecond || 1370*time.Millisecond-share > time.Microsecond {
		t.Errorf("fcmShare = %v, %v; want 1.37s (initrd 1.23s -> sshd started 2.6s)", share, ok)
	}
	last := bootStages[len(bootStages)-1]
	if d, ok := last.get(s); !ok || d != 200*time.Millisecond {
		t.Errorf("%s = %v, %v; want 200ms", last.name, d, ok)
	}
}
