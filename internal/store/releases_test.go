package store

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestReleases_KeptPerIDAndPruned(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// v1 succeeds, then 119 failures: v1 stays the current release.
	err = st.Update(func(tx *Tx) error {
		for v := 1; v <= 120; v++ {
			r := &Release{VM: "a1", Version: v, Status: ReleaseFailed, Env: map[string]string{"N": fmt.Sprint(v % 3)}}
			if v == 1 {
				r.Status, r.Env = ReleaseSucceeded, map[string]string{"FIRST": "1"}
			}
			if err := tx.PutRelease(r); err != nil {
				return err
			}
		}
		return tx.PutRelease(&Release{VM: "b1", Version: 1, Status: ReleaseSucceeded, Env: map[string]string{"OTHER": "app"}})
	})
	if err != nil {
		t.Fatal(err)
	}
	st.View(func(tx *Tx) error {
		all, _ := tx.Releases("a1")
		if len(all) != KeepReleases+1 || all[0].Version != 1 || all[1].Version != 120-KeepReleases+1 {
			t.Errorf("kept %d releases, first v%d then v%d", len(all), all[0].Version, all[1].Version)
		}
		env, err := tx.ReleaseEnv(all[0])
		if err != nil || env["FIRST"] != "1" {
			t.Errorf("the current release's env: %v %v", env, err)
		}
		// Three distinct envs among the newest 50, plus the current one's.
		n := 0
		tx.tx.Bucket(bucketEnvs).ForEach(func(k, v []byte) error { n++; return nil })
		if n != 4+1 {
			t.Errorf("%d config versions stored, want 5 (4 of a1, 1 of b1)", n)
		}
		last, _ := tx.LastRelease("a1")
		if last == nil || last.Version != 120 {
			t.Errorf("last release of a1: %+v", last)
		}
		if last, _ := tx.LastRelease("b1"); last == nil || last.Version != 1 {
			t.Errorf("last release of b1: %+v", last)
		}
		if last, _ := tx.LastRelease("a"); last != nil {
			t.Errorf("last release of a (no such app): %+v", last)
		}
		return nil
	})
	st.Update(func(tx *Tx) error { return tx.DeleteApp("a1") })
	st.View(func(tx *Tx) error {
		apps, _ := tx.Apps()
		if len(apps) != 1 || apps[0] != "b1" {
			t.Errorf("apps after a1 was deleted: %v", apps)
		}
		return nil
	})
}

func TestReleases_MigratedFromNames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fcm.db")
	st, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st.Update(func(tx *Tx) error { return tx.InsertVM(&VM{ID: "a1", Name: "hello", Owner: "alice"}) })
	st.Close()
	// As a daemon before apps were keyed by id left them: by name, env inline.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		rel, _ := tx.CreateBucketIfNotExists(legacyReleases)
		cfg, _ := tx.CreateBucketIfNotExists(legacyConfig)
		data, _ := json.Marshal(map[string]any{"vm": "hello", "version": 1, "status": "succeeded", "env": map[string]string{"GREETING": "hola"}})
		rel.Put([]byte("hello/00000001"), data)
		rel.Put([]byte("gone/00000001"), data)
		cfg.Put([]byte("hello"), []byte(`{"GREETING":"hola"}`))
		cfg.Put([]byte("gone"), []byte(`{"X":"1"}`))
		return nil
	})
	db.Close()
	st, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.View(func(tx *Tx) error {
		all, _ := tx.Releases("a1")
		if len(all) != 1 {
			t.Fatalf("releases of a1 after the move: %d", len(all))
		}
		env, _ := tx.ReleaseEnv(all[0])
		cfg, _ := tx.Config("a1")
		if env["GREETING"] != "hola" || cfg["GREETING"] != "hola" || all[0].VM != "a1" {
			t.Errorf("moved: release %+v env %v config %v", all[0], env, cfg)
		}
		apps, _ := tx.Apps()
		if len(apps) != 1 || tx.tx.Bucket(legacyReleases) != nil || tx.tx.Bucket(legacyConfig) != nil {
			t.Errorf("apps %v; old buckets left", apps)
		}
		return nil
	})
}
