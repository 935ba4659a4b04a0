#!/usr/bin/env bash
# fcm quick start: install what is missing, build fcm and the guest image, start
# the daemon and create a first VM. Run as root from the repository:
#   sudo env "PATH=$PATH" ./scripts/quickstart.sh
# FCM_DATA_DIR (default /var/lib/firecracker) and FCM_VARIANT (default full) change
# where and what; FCM_NO_SYSTEMD=1 runs the daemon in the background instead of
# installing the systemd unit.
set -euo pipefail
start_dir=$PWD
cd "$(dirname "$0")/.."
data=${FCM_DATA_DIR:-/var/lib/firecracker}
variant=${FCM_VARIANT:-full}
say() { printf '\n==> %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "quickstart: run it as root (sudo env \"PATH=\$PATH\" $0)" >&2; exit 1; }
command -v go >/dev/null || { echo "quickstart: Go 1.26+ is needed (https://go.dev/dl/); put it on PATH" >&2; exit 1; }

say "host packages"
missing=
for tool in qemu-system-x86_64 debootstrap mkfs.ext4 lz4 nft ip make; do
	command -v "$tool" >/dev/null || missing=1
done
if [ -n "$missing" ]; then make deps; else echo "all present"; fi

say "building fcm"
make build
install -m 0755 bin/fcm /usr/local/bin/fcm
echo "/usr/local/bin/fcm: $(fcm version)"

say "guest image ($variant) in $data"
if [ -f "$data/image.json" ]; then
	echo "already built (rebuild with: sudo fcm image build --variant $variant --out $data)"
else
	fcm image build --variant "$variant" --out "$data"
fi

say "starting the daemon"
if curl -fsS http://127.0.0.1:7777/health >/dev/null 2>&1; then
	echo "already running"
elif [ -z "${FCM_NO_SYSTEMD:-}" ] && [ -d /run/systemd/system ] && [ "$data" = /var/lib/firecracker ]; then
	install -m 0644 deploy/fcm.service /etc/systemd/system/fcm.service
	systemctl daemon-reload
	systemctl enable --now fcm
	echo "systemd unit fcm.service enabled (logs: journalctl -u fcm -f)"
else
	nohup fcm daemon --data-dir "$data" >>"$data/daemon.log" 2>&1 &
	echo "running in the background, pid $! (log: $data/daemon.log)"
fi
for _ in $(seq 1 100); do
	curl -fsS http://127.0.0.1:7777/health >/dev/null 2>&1 && break
	sleep 0.2
done
curl -fsS http://127.0.0.1:7777/health >/dev/null || { echo "quickstart: the daemon did not come up; see its log" >&2; exit 1; }

# The token, for root here and for the user who ran sudo.
install -m 0600 "$data/.token" "$HOME/.fcm-token"
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
	install -m 0600 -o "$SUDO_USER" "$data/.token" "$home/.fcm-token"
fi

say "creating a first VM"
cd "$start_dir"
fcm create
cat <<TXT

Next:
  fcm ls                 # your VMs
  fcm stop / fcm start   # the VM named in ./.fcm
  fcm create --name api  # another one
  fcm destroy <name>     # remove one
TXT
