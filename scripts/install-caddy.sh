#!/usr/bin/env bash
# Install a Caddy new enough for fcm (2.7+: stream_close_delay keeps pushes,
# progress streams and consoles open when routes change) as /usr/local/bin/caddy,
# and point the distribution's caddy.service at it. Usage: install-caddy.sh BINARY
set -euo pipefail
new=$1
# caddy's version: its module's (go install builds say "unknown" to 'caddy version'),
# else the first word of 'caddy version'.
version() {
	{ "$1" build-info 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/caddyserver/caddy/v2" { print $3 }'
	  "$1" version 2>/dev/null | cut -d' ' -f1; } | grep -m1 -E '^v?[0-9]+[.][0-9]+' | sed 's/^v//'
}
# Protect Caddy from the OOM killer (as fcm.service is): under memory pressure
# the kernel takes a VM's hypervisor (oom_score_adj 500), not the edge.
if [ -f /lib/systemd/system/caddy.service ] || [ -f /usr/lib/systemd/system/caddy.service ]; then
	mkdir -p /etc/systemd/system/caddy.service.d
	cat >/etc/systemd/system/caddy.service.d/fcm-oom.conf <<'UNIT'
# fcm: the OOM killer takes a VM before Caddy.
[Service]
OOMScoreAdjust=-900
UNIT
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
fi
if have=$(command -v caddy) && v=$(version "$have") && [ -n "$v" ]; then
	IFS=. read -r major minor _ <<<"$v"
	if [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 7 ]; }; then
		echo "$have is Caddy $v: new enough"
		exit 0
	fi
fi
install -m 0755 "$new" /usr/local/bin/caddy
echo "installed Caddy $(version /usr/local/bin/caddy) as /usr/local/bin/caddy (${v:+the $have there is $v, }fcm needs 2.7 or later)"
if [ -f /lib/systemd/system/caddy.service ] || [ -f /usr/lib/systemd/system/caddy.service ]; then
	mkdir -p /etc/systemd/system/caddy.service.d
	cat >/etc/systemd/system/caddy.service.d/fcm.conf <<'UNIT'
# fcm: run Caddy 2.7+ (installed by fcm's scripts/install-caddy.sh).
[Service]
ExecStart=
ExecStart=/usr/local/bin/caddy run --environ --config /etc/caddy/Caddyfile
ExecReload=
ExecReload=/usr/local/bin/caddy reload --config /etc/caddy/Caddyfile --force
UNIT
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	echo "caddy.service now runs /usr/local/bin/caddy (drop-in /etc/systemd/system/caddy.service.d/fcm.conf)"
fi
