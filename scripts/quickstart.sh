#!/usr/bin/env bash
# fcm quick start: install what is missing, build fcm and the guest image, start
# the daemon and create a first VM. Run as root from the repository:
#   sudo env "PATH=$PATH" ./scripts/quickstart.sh
# FCM_DATA_DIR (default /var/lib/firecracker) and FCM_VARIANT (default full) change
# where and what; FCM_DOMAIN serves VMs at https://<name>.$FCM_DOMAIN (default
# <host-ip-with-dashes>.sslip.io); FCM_NO_SYSTEMD=1 runs Caddy and the daemon in
# the background instead of as systemd units.
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
for tool in qemu-system-x86_64 debootstrap mkfs.ext4 mkfs.xfs lz4 nft ip make caddy curl npm; do
	command -v "$tool" >/dev/null || missing=1
done
if [ -n "$missing" ]; then make deps; else echo "all present"; fi
# Caddy 2.7+ (distributions ship older ones): built once, cached in /var/cache/fcm.
make caddy

say "building fcm"
make build
install -m 0755 bin/fcm /usr/local/bin/fcm
echo "/usr/local/bin/fcm: $(fcm version)"
say "client downloads (served at /releases/ and /install.sh)"
make release RELEASES="$data/releases"

say "guest image ($variant) in $data"
if [ -f "$data/image.json" ]; then
	echo "already built (rebuild with: sudo fcm image build --variant $variant --out $data)"
else
	fcm image build --variant "$variant" --out "$data"
fi

say "Caddy (HTTPS for every VM; fcm configures it through its admin API)"
use_systemd=
if [ -z "${FCM_NO_SYSTEMD:-}" ] && [ -d /run/systemd/system ] && [ "$data" = /var/lib/firecracker ]; then use_systemd=1; fi
# Caddy's admin API on a unix socket only root (and Caddy's own user) may open:
# on TCP any local user could re-point fcm.<domain> and collect API tokens.
admin_sock=/run/caddy/admin.sock
caddy_admin() { curl -fsS --max-time 5 --unix-socket "$admin_sock" "http://127.0.0.1$1"; }
# The package's Caddyfile serves a welcome page on :80, which would shadow the
# HTTP->HTTPS redirects; an older quick start put the admin API on TCP: keep
# only the admin API, on the socket.
if [ ! -f /etc/caddy/Caddyfile ] || grep -q /usr/share/caddy /etc/caddy/Caddyfile ||
	{ grep -q '^# fcm configures this Caddy' /etc/caddy/Caddyfile && ! grep -q "$admin_sock" /etc/caddy/Caddyfile; }; then
	mkdir -p /etc/caddy
	if [ -f /etc/caddy/Caddyfile ] && grep -q /usr/share/caddy /etc/caddy/Caddyfile; then
		mv /etc/caddy/Caddyfile /etc/caddy/Caddyfile.dist
		echo "replaced the package's welcome-page Caddyfile (kept as /etc/caddy/Caddyfile.dist)"
	fi
	printf '# fcm configures this Caddy through its admin API, on a socket only root may open.\n{\n\tadmin unix/%s|0600\n}\n' "$admin_sock" >/etc/caddy/Caddyfile
	echo "/etc/caddy/Caddyfile: admin API on unix/$admin_sock (mode 0600)"
	changed_caddyfile=1
fi
if [ -n "$use_systemd" ]; then
	# /run/caddy, made for Caddy's user at each start, closed to everyone else.
	mkdir -p /etc/systemd/system/caddy.service.d
	printf '# fcm: a directory for Caddy'"'"'s admin socket (unix//run/caddy/admin.sock).\n[Service]\nRuntimeDirectory=caddy\nRuntimeDirectoryMode=0700\n' \
		>/etc/systemd/system/caddy.service.d/fcm-admin-socket.conf
	systemctl daemon-reload
else
	install -d -m 0700 /run/caddy
fi
admin_addr=unix/$admin_sock
if ! grep -q "$admin_sock" /etc/caddy/Caddyfile; then
	# A Caddyfile of the operator's own: leave it, and Caddy's admin API on TCP.
	echo "warning: /etc/caddy/Caddyfile keeps Caddy's admin API on TCP, where any local user can rewrite fcm's routes;" >&2
	echo "  put 'admin unix/$admin_sock|0600' in its global options block and run this again" >&2
	admin_addr=http://127.0.0.1:2019
	caddy_admin() { curl -fsS --max-time 5 "http://127.0.0.1:2019$1"; }
fi
if caddy_admin /config/ >/dev/null 2>&1; then
	echo "Caddy's admin API answers on $admin_addr"
elif [ -n "$use_systemd" ]; then
	systemctl enable caddy
	systemctl restart caddy
elif [ -n "${changed_caddyfile:-}" ] && curl -fsS --max-time 5 http://127.0.0.1:2019/config/ >/dev/null 2>&1; then
	# A Caddy from an older quick start, admin on TCP: move it to the socket.
	caddy reload --config /etc/caddy/Caddyfile --address 127.0.0.1:2019 --force
else
	mkdir -p "$data"
	(cd /etc/caddy 2>/dev/null || cd /; nohup caddy run --config /etc/caddy/Caddyfile >>"$data/caddy.log" 2>&1 &)
	echo "running in the background (log: $data/caddy.log)"
fi
for _ in $(seq 1 50); do
	caddy_admin /config/ >/dev/null 2>&1 && break
	sleep 0.2
done
caddy_admin /config/ >/dev/null || { echo "quickstart: Caddy's admin API does not answer on $admin_addr (see journalctl -u caddy or $data/caddy.log)" >&2; exit 1; }

flags="--caddy-admin $admin_addr${FCM_DOMAIN:+ --domain $FCM_DOMAIN}"
say "starting the daemon"
if curl -fsS http://127.0.0.1:7777/health >/dev/null 2>&1; then
	echo "already running"
elif [ -n "$use_systemd" ]; then
	install -m 0644 deploy/fcm.service /etc/systemd/system/fcm.service
	echo "FCM_DAEMON_FLAGS=\"$flags\"" >/etc/default/fcm
	systemctl daemon-reload
	systemctl enable --now fcm
	echo "systemd unit fcm.service enabled (logs: journalctl -u fcm -f)"
else
	# shellcheck disable=SC2086
	nohup fcm daemon --data-dir "$data" $flags >>"$data/daemon.log" 2>&1 &
	echo "running in the background, pid $! (log: $data/daemon.log)"
fi
for _ in $(seq 1 100); do
	curl -fsS http://127.0.0.1:7777/health >/dev/null 2>&1 && break
	sleep 0.2
done
curl -fsS http://127.0.0.1:7777/health >/dev/null || { echo "quickstart: the daemon did not come up; see its log" >&2; tail -3 "$data/daemon.log" 2>/dev/null >&2; exit 1; }

# The token, for root here and for the user who ran sudo.
install -m 0600 "$data/.token" "$HOME/.fcm-token"
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
	install -m 0600 -o "$SUDO_USER" "$data/.token" "$home/.fcm-token"
fi

say "creating a first VM"
cd "$start_dir"
# No git remote here: this is likely fcm's own clone.
fcm create --no-git
name=$(cat .fcm)
cat <<TXT

Deploy an app to it: in the app's directory (a git repository)
  fcm git-remote $name && git push fcm main
or start one from scratch:
  mkdir hello && cd hello && fcm create      # a new VM, a git repo and the remote fcm
  echo 'web: python3 -m http.server 3000' > Procfile
  echo '<h1>Hello World</h1>' > index.html
  git add . && git commit -m init && git push fcm main

Next:
  fcm ls                 # your VMs
  fcm stop / fcm start   # the VM named in ./.fcm
  fcm create --name api  # another one
  fcm destroy <name>     # remove one
  fcm console            # a shell in the VM that survives disconnects
The URL works once this host's ports 80 and 443 are reachable from the
internet (Let's Encrypt checks them); see the daemon's log for certificates.
TXT
