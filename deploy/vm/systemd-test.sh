#!/usr/bin/env bash
# The units under a real systemd: boots this machine's own root file system
# (read-only, under an overlay whose changes are thrown away) in a
# systemd-nspawn container with its own network namespace, and there runs
# install.sh for real and drives the units: the start order, a crash of the
# sidecar (rules removed, sidecar restarted, rules back), stop, start of the
# init unit alone, restart, a second install, uninstall --purge; and a
# connection going through the hardened sidecar. For machines without
# systemd as PID 1 (containers, CI): needs root, systemd-nspawn (Debian:
# systemd-container), iptables, curl and python3 in the root file system.
#
# Usage: deploy/vm/systemd-test.sh --bin-dir DIR   (the release binaries)
# Prints the log of the run inside and "N passed, N failed"; exits 1 on a
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy="$PWD"
if [ "${1:-}" != --bin-dir ] || [ -z "${2:-}" ]; then
  echo "usage: systemd-test.sh --bin-dir DIR" >&2
  exit 2
fi
bin_dir="$(cd "$2" && pwd)"
[ "$(id -u)" = 0 ] || { echo "systemd-test.sh: needs root" >&2; exit 1; }
command -v systemd-nspawn >/dev/null || { echo "systemd-test.sh: needs systemd-nspawn (apt-get install systemd-container)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/seed" "$work/result" "$work/up" "$work/wk" "$work/root"

# The test, run by a oneshot unit once the container has booted.
cat >"$work/seed/test.sh" <<'TEST'
#!/bin/bash
exec >/result/log 2>&1
set -uo pipefail
passed=0 failed=0
check() { # check DESCRIPTION COMMAND...
  local what="$1"; shift
  if "$@"; then echo "ok   $what"; passed=$((passed + 1)); else echo "FAIL $what ($(states))"; failed=$((failed + 1)); fi
}
rules() { iptables-save -t nat 2>/dev/null | grep -c 'l7inspect:' || true; }
states() { echo "sidecar=$(systemctl is-active l7inspect-sidecar) init=$(systemctl is-active l7inspect-init) rules=$(rules)"; }
both_up() { [ "$(systemctl is-active l7inspect-sidecar)" = active ] && [ "$(systemctl is-active l7inspect-init)" = active ] && [ "$(rules)" -gt 0 ]; }
# wait_for SECONDS COMMAND...: poll every 50 ms
wait_for() { local end=$((SECONDS + $1)); shift; until "$@"; do [ "$SECONDS" -lt "$end" ] || return 1; sleep 0.05; done; }
no_rules() { [ "$(rules)" = 0 ]; }
outbound() { curl -sf http://127.0.0.1:4191/metrics | awk '/^l7inspect_tcp_connections_total.*outbound/ {n += $NF} END {print n + 0}'; }

# The "app": a server on a non-loopback address of the namespace, called by root.
ip addr add 10.99.0.1/32 dev lo
python3 -m http.server --bind 10.99.0.1 18080 >/dev/null 2>&1 &

/opt/deploy/vm/install.sh --bin-dir /opt/l7bin
check "install.sh: user l7inspect is 2102:2102" [ "$(id -u l7inspect):$(id -g l7inspect)" = 2102:2102 ]
check "install.sh: both units active, rules installed" both_up
check "the sidecar runs as l7inspect" [ "$(ps -o user= -C l7inspect-sidecar)" = l7inspect ]
before="$(outbound)"
check "a connection of the app goes through the hardened sidecar" curl -sf -o /dev/null --max-time 5 http://10.99.0.1:18080/
check "  ... and the sidecar counted it" [ "$(outbound)" -gt "$before" ]

# After a crash the rules must be gone before the sidecar is back (else the
# app's connections are refused meanwhile). Checked from the journal's order,
# not with a deadline: a loaded machine can take over a second to remove them.
cursor="$(journalctl -n 0 --show-cursor -o cat | sed -n 's/^-- cursor: //p')"
systemctl kill -s SIGKILL l7inspect-sidecar
start=$SECONDS
check "crash: the sidecar restarts and the rules are back within 15 s" wait_for 15 both_up
echo "     (back after $((SECONDS - start)) s; sidecar restarts: $(systemctl show -p NRestarts --value l7inspect-sidecar))"
# removed_before_restart: the init unit's ExecStop (l7inspect-init --remove)
# succeeded after the crash, and before the sidecar was started again.
removed_before_restart() {
  journalctl --no-pager -o cat --after-cursor "$cursor" -u l7inspect-init -u l7inspect-sidecar |
    grep -E -m1 '^(l7inspect-init\.service: (Deactivated successfully|Control process exited)|Started l7inspect-sidecar\.service)' |
    grep -q '^l7inspect-init\.service: Deactivated successfully'
}
check "crash: the rules were removed before the sidecar restarted" removed_before_restart
before="$(outbound)"
curl -sf -o /dev/null --max-time 5 http://10.99.0.1:18080/
check "after the crash, connections go through the sidecar again" [ "$(outbound)" -gt "$before" ]

systemctl stop l7inspect-sidecar
check "stop the sidecar: the init unit stops too, the rules are gone" [ "$(systemctl is-active l7inspect-init)" = inactive ] && no_rules
check "with the sidecar stopped, the app's connection goes direct" curl -sf -o /dev/null --max-time 5 http://10.99.0.1:18080/
systemctl start l7inspect-init
check "start the init unit alone: it starts the sidecar first, then the rules" both_up
systemctl restart l7inspect-sidecar
check "restart the sidecar: the init unit follows, rules back" wait_for 5 both_up
systemctl stop l7inspect-init
check "stop the init unit alone: rules gone, sidecar still active" [ "$(systemctl is-active l7inspect-sidecar)" = active ] && no_rules
second="$(/opt/deploy/vm/install.sh --bin-dir /opt/l7bin)"
check "second install.sh: nothing reinstalled" bash -c '! grep -q "^install:" <<<"$1"' _ "$second"
check "second install.sh: both units active again" both_up
/opt/deploy/vm/install.sh --uninstall --purge
check "uninstall --purge: rules gone, units and binaries gone, user gone" \
  bash -c '[ "$(iptables-save -t nat | grep -c l7inspect:)" = 0 ] && [ ! -e /etc/systemd/system/l7inspect-init.service ] && [ ! -e /usr/local/bin/l7inspect-sidecar ] && [ ! -e /etc/l7inspect ] && ! getent passwd l7inspect'
echo "--- journal"
journalctl --no-pager -o short-precise -u l7inspect-sidecar -u l7inspect-init | tail -60
echo "$passed passed, $failed failed"
echo "$passed $failed" >/result/status
systemctl poweroff
TEST
chmod +x "$work/seed/test.sh"
cat >"$work/seed/l7i-test.service" <<'UNIT'
[Unit]
Description=l7inspect units test
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/seed/test.sh
UNIT

# The root: this machine's own, under an overlay, in a private mount namespace.
set +e
# shellcheck disable=SC2016 # $1.. are the inner bash's arguments
timeout 180 unshare -m bash -c '
  set -e
  mount -t overlay overlay -o lowerdir=/,upperdir="$1/up",workdir="$1/wk" "$1/root"
  exec systemd-nspawn --quiet --register=no --keep-unit --link-journal=no -D "$1/root" --private-network \
    --bind-ro="$2:/opt/l7bin" --bind-ro="$3:/opt/deploy" --bind-ro="$1/seed:/seed" --bind="$1/result:/result" \
    --bind-ro="$1/seed/l7i-test.service:/etc/systemd/system/l7i-test.service" \
    -b systemd.wants=l7i-test.service
' _ "$work" "$bin_dir" "$deploy" >"$work/console.log" 2>&1
rc=$?
set -e
if [ ! -s "$work/result/status" ]; then
  tail -40 "$work/console.log" >&2
  cat "$work/result/log" >&2 2>/dev/null || true
  echo "systemd-test.sh: the container did not finish the test (systemd-nspawn exit $rc)" >&2
  exit 1
fi
cat "$work/result/log"
read -r passed failed <"$work/result/status"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
