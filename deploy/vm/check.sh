#!/usr/bin/env bash
# Checks of deploy/vm that need no running systemd:
#   1. install.sh --root into a temporary directory: the file tree, modes,
#      the enable symlinks; run again: nothing changes (idempotent);
#   2. systemd-analyze verify on the staged units (and the offline
#      `systemd-analyze security` exposure scores, for information);
#   3. as root, in a fresh network namespace (unshare -n): the init unit's
#      own ExecStartPre=/ExecStart=/ExecStop= command lines, parsed from the
#      unit file and run with the staged init.env, against the staged
#      sidecar running as UID 2102: the wait, the rules appearing, a
#      connection going through the sidecar, the rules disappearing; for the
#      iptables and the nft backend;
#   4. install.sh --uninstall --root: everything it installed is gone except
#      /etc/l7inspect; then --uninstall --purge: that too;
#   5. when systemd-nspawn is installed: systemd-test.sh, the units under a
#      real systemd (see there).
#
# Usage: deploy/vm/check.sh --bin-dir DIR   (the release binaries, e.g.
#        $CARGO_TARGET_DIR/release; without it install.sh builds them)
set -euo pipefail
cd "$(dirname "$0")"

install_args=()
if [ "${1:-}" = --bin-dir ]; then
  install_args=(--bin-dir "$(cd "${2:?--bin-dir needs a directory}" && pwd)")
elif [ "$#" -gt 0 ]; then
  echo "check.sh: unknown argument '$1' (usage: check.sh [--bin-dir DIR])" >&2
  exit 2
fi

failures=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; failures=$((failures + 1)); }
skip() {
  if [ "${L7INSPECT_REQUIRE_NETNS:-0}" = 1 ]; then fail "$* (L7INSPECT_REQUIRE_NETNS=1)"; else echo "skip $*"; fi
}

work="$(mktemp -d)"
sidecar_pid=''
cleanup() {
  [ -z "$sidecar_pid" ] || kill "$sidecar_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
root="$work/root"

# The tree install.sh must leave: path, mode.
expected=(
  "usr/local/bin/l7inspect-sidecar 755"
  "usr/local/bin/l7inspect-init 755"
  "usr/local/bin/l7inspect-wait-ready 755"
  "etc/systemd/system/l7inspect-sidecar.service 644"
  "etc/systemd/system/l7inspect-init.service 644"
  "etc/l7inspect/sidecar.env 644"
  "etc/l7inspect/init.env 644"
)
tree() { (cd "$root" && find . \( -type f -o -type l \) -printf '%P %m %l\n' | sort); }

# --- 1. install, twice --------------------------------------------------------
if ./install.sh --root "$root" "${install_args[@]}" >"$work/install1.log" 2>&1; then
  ok "install.sh --root"
else
  cat "$work/install1.log" >&2
  fail "install.sh --root"
fi
for e in "${expected[@]}"; do
  read -r path mode <<<"$e"
  if [ -f "$root/$path" ] && [ "$(stat -c %a "$root/$path")" = "$mode" ]; then
    ok "installed /$path (mode $mode)"
  else
    fail "/$path missing or not mode $mode"
  fi
done
cmp -s "$root/etc/systemd/system/l7inspect-init.service" systemd/l7inspect-init.service || fail "the installed init unit differs from systemd/"
cmp -s "$root/etc/l7inspect/init.env" init.env || fail "the installed init.env differs from init.env"
for u in l7inspect-sidecar.service l7inspect-init.service; do
  link="$root/etc/systemd/system/multi-user.target.wants/$u"
  if [ "$(readlink "$link" || true)" = "/etc/systemd/system/$u" ]; then ok "enabled: $u"; else fail "not enabled: $u"; fi
done
if grep -q '^would run: .*useradd --system --uid 2102' "$work/install1.log"; then
  ok "--root does not create the user, prints it"
else
  fail "--root: no useradd line printed"
fi
extra="$(tree | grep -v -e '^usr/local/bin/' -e '^etc/systemd/system/' -e '^etc/l7inspect/' || true)"
[ -z "$extra" ] || fail "install.sh wrote unexpected files: $extra"

echo "# a local edit that a second run must keep" >>"$root/etc/l7inspect/sidecar.env"
before="$(tree; md5sum "$root"/etc/l7inspect/*)"
./install.sh --root "$root" "${install_args[@]}" >"$work/install2.log" 2>&1 || fail "install.sh --root, second run"
after="$(tree; md5sum "$root"/etc/l7inspect/*)"
if [ "$before" = "$after" ] && ! grep -q '^install:' "$work/install2.log"; then
  ok "second install.sh --root: same tree, nothing reinstalled, edited sidecar.env kept"
else
  diff <(echo "$before") <(echo "$after") >&2 || true
  fail "second install.sh --root changed the tree"
fi

# --- 2. systemd-analyze ------------------------------------------------------
units=("$root/etc/systemd/system/l7inspect-sidecar.service" "$root/etc/systemd/system/l7inspect-init.service")
if command -v systemd-analyze >/dev/null; then
  # --recursive-errors=no: the staging root has no sysinit.target & co.
  if out="$(systemd-analyze verify --recursive-errors=no --root="$root" "${units[@]#"$root"}" 2>&1)" && [ -z "$out" ]; then
    ok "systemd-analyze verify (no warnings)"
  else
    echo "$out" >&2
    fail "systemd-analyze verify"
  fi
  for u in "${units[@]#"$root"}"; do
    score="$(systemd-analyze security --offline=yes --root="$root" "$u" 2>/dev/null | sed -n 's/.*Overall exposure level for \(.*\)/\1/p')"
    echo "info systemd-analyze security: ${score:-n/a}"
  done
else
  skip "systemd-analyze (not installed)"
fi

# --- 3. the init unit's command lines, in a fresh network namespace ------------
# The unit's ExecStartPre=/ExecStart=/ExecStop= values, without systemd's
# prefixes (-, +, @, !, :).
unit_exec() {
  sed -n "s/^$1=//p" "$root/etc/systemd/system/l7inspect-init.service" | sed 's/^[-+@!:]*//'
}
if [ "$(id -u)" != 0 ] || ! unshare -n true 2>/dev/null; then
  skip "the init unit's commands in a network namespace (needs root and unshare -n)"
elif ! command -v curl >/dev/null || ! command -v setpriv >/dev/null; then
  skip "the init unit's commands in a network namespace (needs curl and setpriv)"
else
  pre="$(unit_exec ExecStartPre)"
  start="$(unit_exec ExecStart)"
  stop="$(unit_exec ExecStop)"
  if [ -z "$pre" ] || [ -z "$start" ] || [ -z "$stop" ]; then
    fail "the init unit lacks ExecStartPre/ExecStart/ExecStop"
  fi
  # In the staging root: the unit's /usr/local/bin/X is $root/usr/local/bin/X.
  staged() { echo "${1//\/usr\/local\/bin\//$root/usr/local/bin/}"; }
  for backend in iptables nft; do
    log="$work/netns-$backend.log"
    # shellcheck disable=SC2016 # expanded by the inner bash
    if unshare -n env ROOT="$root" WORK="$work" BACKEND="$backend" PRE="$(staged "$pre")" START="$(staged "$start")" STOP="$(staged "$stop")" \
      bash -euo pipefail -c '
        ip link set lo up
        # A non-loopback address of this namespace (on lo: no dummy module needed).
        ip addr add 10.99.0.1/32 dev lo
        count() { { iptables-save -t nat 2>/dev/null; nft list ruleset 2>/dev/null; } | grep -c "l7inspect" || true; }
        # The unit environment: the staged init.env (all defaults), the backend.
        set -a; . "$ROOT/etc/l7inspect/init.env"; set +a
        export L7INSPECT_BACKEND="$BACKEND" L7INSPECT_WAIT_TIMEOUT=10
        # A server on a non-loopback address of this namespace.
        python3 -m http.server --bind 10.99.0.1 18080 >/dev/null 2>&1 & server=$!
        # The sidecar as the l7inspect user would run it (UID/GID 2102), started
        # late so that ExecStartPre has to wait for it.
        (sleep 1; exec setpriv --reuid 2102 --regid 2102 --clear-groups "$ROOT/usr/local/bin/l7inspect-sidecar") >"$WORK/sidecar-$BACKEND.log" 2>&1 & sidecar=$!
        trap "kill $server $sidecar 2>/dev/null || true" EXIT
        echo "rules before: $(count)"; [ "$(count)" = 0 ]
        echo "+ ExecStartPre: $PRE"; $PRE
        echo "+ ExecStart: $START"; $START
        echo "rules after ExecStart: $(count)"; [ "$(count)" -gt 0 ]
        # The app (root, not UID 2102) calls its own non-loopback address:
        # redirected to the outbound port, the sidecar dials on.
        curl -sf -o /dev/null --max-time 5 http://10.99.0.1:18080/
        metrics="$(curl -sf http://127.0.0.1:4191/metrics)"
        echo "$metrics" | grep -E "^l7inspect_tcp_connections_total.*outbound" || { echo "no outbound connection counted by the sidecar"; exit 1; }
        echo "+ ExecStop: $STOP"; $STOP
        echo "rules after ExecStop: $(count)"; [ "$(count)" = 0 ]
        # Without the rules the same call goes direct (fail open).
        curl -sf -o /dev/null --max-time 5 http://10.99.0.1:18080/
      ' >"$log" 2>&1; then
      ok "netns, $backend backend: ExecStartPre waited for /ready, ExecStart installed the rules ($(sed -n 's/^rules after ExecStart: //p' "$log") lines), a connection went through the sidecar, ExecStop removed them"
    else
      sed 's/^/  | /' "$log" >&2
      fail "netns, $backend backend: the init unit's command lines"
    fi
  done
fi

# --- 3b. a real install (no --root), in private mount and network namespaces --
# A copy of /etc and an empty /usr/local/bin are mounted over the real ones,
# so useradd, the files and the enable links land there, and the rule
# removal of --uninstall runs in an empty network namespace.
in_private_root() {
  local etc="$work/etc-copy"
  rm -rf "$etc" && cp -a /etc "$etc"
  # shellcheck disable=SC2016 # expanded by the inner bash
  unshare -m -n env ETC="$etc" WORK="$work" INSTALL="$PWD/install.sh" bash -euo pipefail -c '
    mount --bind "$ETC" /etc
    mount -t tmpfs none /usr/local/bin
    '"$1"
}
if [ "$(id -u)" != 0 ] || ! unshare -m -n true 2>/dev/null; then
  skip "a real install in private namespaces (needs root and unshare -m -n)"
else
  # The staged binaries (the tree from step 1 is still there).
  cp -a "$root/usr/local/bin" "$work/bin"
  bin_arg=(--bin-dir "$work/bin")
  # shellcheck disable=SC2016 # expanded by the inner bash
  if out="$(in_private_root '
      "$INSTALL" --no-start '"${bin_arg[*]}"' >/dev/null
      [ "$(id -u l7inspect):$(id -g l7inspect)" = 2102:2102 ]
      [ "$(getent passwd l7inspect | cut -d: -f7)" = /usr/sbin/nologin ]
      [ -L /etc/systemd/system/multi-user.target.wants/l7inspect-init.service ]
      second="$("$INSTALL" --no-start '"${bin_arg[*]}"')"
      ! grep -q "^install:" <<<"$second"
      "$INSTALL" --uninstall >/dev/null
      [ ! -e /usr/local/bin/l7inspect-sidecar ] && [ ! -e /etc/systemd/system/l7inspect-init.service ]
      [ -f /etc/l7inspect/init.env ]
    ' 2>&1)"; then
    ok "install.sh --no-start as root: user and group l7inspect 2102:2102, enabled; second run changes nothing; --uninstall"
  else
    echo "$out" >&2
    fail "install.sh --no-start as root, in private namespaces"
  fi
  # A UID or GID 2102 that belongs to someone else: one line, nothing created.
  for conflict in "useradd --system --no-create-home --uid 2102 someoneelse" "groupadd --gid 2102 othergroup" "useradd --uid 3000 l7inspect"; do
    # shellcheck disable=SC2016 # expanded by the inner bash
    if out="$(in_private_root "$conflict"' 2>/dev/null
        if "$INSTALL" --no-start '"${bin_arg[*]}"' >"$WORK/out" 2>"$WORK/err"; then echo "install.sh succeeded"; exit 1; fi
        [ "$(wc -l <"$WORK/err")" = 1 ] || { cat "$WORK/err"; exit 1; }
        cat "$WORK/err"
        [ ! -e /usr/local/bin/l7inspect-sidecar ]
        if [ "$(getent passwd 2102 | cut -d: -f1)" != someoneelse ] && [ "$(getent group 2102 | cut -d: -f1)" != othergroup ]; then
          [ "$(id -u l7inspect)" = 3000 ]
        fi
      ' 2>&1)"; then
      ok "conflict ($conflict): $out"
    else
      echo "$out" >&2
      fail "conflict ($conflict): install.sh did not stop with one line"
    fi
  done
fi

# --- 4. uninstall ------------------------------------------------------------
./install.sh --uninstall --root "$root" >"$work/uninstall.log" 2>&1 || { cat "$work/uninstall.log" >&2; fail "install.sh --uninstall --root"; }
left="$(tree)"
if [ "$(cut -d' ' -f1 <<<"$left" | tr '\n' ' ')" = "etc/l7inspect/init.env etc/l7inspect/sidecar.env " ]; then
  ok "--uninstall removed binaries, units and enable links; kept /etc/l7inspect"
else
  fail "--uninstall left: $(tr '\n' ' ' <<<"$left")"
fi
grep -q '^would run: .*l7inspect-init --remove' "$work/uninstall.log" || fail "--uninstall --root does not print the rule removal"
./install.sh --uninstall --root "$root" >/dev/null 2>&1 || fail "install.sh --uninstall --root, second run"
./install.sh --uninstall --purge --root "$root" >/dev/null 2>&1 || fail "install.sh --uninstall --purge --root"
left="$(tree)"
if [ -z "$left" ]; then ok "--uninstall --purge removed /etc/l7inspect too"; else fail "--purge left: $left"; fi

# --- 5. the units under a real systemd (systemd-nspawn) -------------------------
if [ "$(id -u)" = 0 ] && command -v systemd-nspawn >/dev/null; then
  bin="${install_args[1]:-}"
  if [ -z "$bin" ]; then
    echo "skip systemd-test.sh (give --bin-dir)"
  elif ./systemd-test.sh --bin-dir "$bin" >"$work/systemd-test.log" 2>&1; then
    ok "systemd-test.sh: the units under systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p') in systemd-nspawn: $(tail -n1 "$work/systemd-test.log")"
  else
    sed 's/^/  | /' "$work/systemd-test.log" >&2
    fail "systemd-test.sh: the units under systemd in systemd-nspawn"
  fi
else
  echo "skip systemd-test.sh (needs root and systemd-nspawn: apt-get install systemd-container)"
fi

if [ "$failures" -gt 0 ]; then
  echo "deploy/vm/check.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy/vm/check.sh: all checks passed"
