#!/usr/bin/env bash
# Install l7inspect on a systemd machine (a VM): the binaries, the l7inspect
# user (UID/GID 2102, the UID l7inspect-init exempts from the redirect),
# /etc/l7inspect/{sidecar,init}.env, and the two units, then enable and
# start them. Run it again to upgrade: changed files are replaced and the
# running units restarted; the .env files are never overwritten.
# See deploy/vm/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: install.sh [--bin-dir DIR] [--root DIR] [--no-start]
       install.sh --uninstall [--purge] [--root DIR]

  --bin-dir DIR  take l7inspect-sidecar and l7inspect-init from DIR. Default:
                 in the repository, build them (cargo build --release --locked)
                 when cargo is there, else take them from target/release
  --root DIR     stage into DIR (like DESTDIR): only files are written; the
                 user, systemctl and the rule removal are printed, not done
  --no-start     install and enable, but do not start (or restart) the units
  --uninstall    stop and disable the units (which removes the rules), run
                 l7inspect-init --remove, remove the units and the binaries;
                 /etc/l7inspect is kept
  --purge        with --uninstall: also remove /etc/l7inspect and the
                 l7inspect user and group
  -h, --help     this text
USAGE
}

die() { echo "install.sh: $*" >&2; exit 1; }

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin_dir=''
root=''
start=1
uninstall=0
purge=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --no-start) start=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ "$purge" = 0 ] || [ "$uninstall" = 1 ] || die "--purge goes with --uninstall"
if [ -n "$root" ]; then
  mkdir -p "$root" || die "cannot create --root $root"
  root="$(cd "$root" && pwd)"
  [ "$root" != / ] || root=''
fi
staging=0
[ -z "$root" ] || staging=1

uid=2102
user=l7inspect
prefix=/usr/local/bin
unit_dir=/etc/systemd/system
conf_dir=/etc/l7inspect
units=(l7inspect-sidecar.service l7inspect-init.service)
binaries=(l7inspect-sidecar l7inspect-init)

# Actions on the machine itself: done, or with --root only printed.
system() {
  if [ "$staging" = 1 ]; then
    echo "would run: $*"
  else
    echo "run: $*"
    "$@"
  fi
}

# Enabling and disabling are symlinks only: with --root they are done in DIR.
unit_files() {
  if [ "$staging" = 1 ]; then
    echo "run: systemctl --root=$root $*"
    systemctl --quiet --root="$root" "$@"
  else
    system systemctl "$@"
  fi
}
# daemon-reload needs a running systemd.
reload() {
  if [ "$staging" = 0 ] && [ ! -d /run/systemd/system ]; then
    echo "skipped: systemctl daemon-reload (systemd is not running here)"
  else
    system systemctl daemon-reload
  fi
}

if [ "$staging" = 0 ]; then
  [ "$(id -u)" = 0 ] || die "must run as root (or stage with --root DIR)"
  if [ "$start" = 1 ] && [ "$uninstall" = 0 ]; then
    [ -d /run/systemd/system ] || die "systemd is not running here (no /run/systemd/system): use --no-start, or --root DIR to stage"
  fi
fi

# ---------------------------------------------------------------------------
if [ "$uninstall" = 1 ]; then
  # Stopping the init unit first runs its ExecStop (the rules go), then the sidecar.
  if [ "$staging" = 1 ]; then
    echo "would run: systemctl stop ${units[1]} ${units[0]}"
    if [ -e "$root$unit_dir/${units[0]}" ]; then unit_files disable "${units[@]}"; fi
  elif [ -e "$unit_dir/${units[1]}" ] || [ -e "$unit_dir/${units[0]}" ]; then
    if [ -d /run/systemd/system ]; then
      system systemctl disable --now "${units[1]}" "${units[0]}"
    else
      echo "skipped: systemctl stop (systemd is not running here)"
      system systemctl disable "${units[1]}" "${units[0]}"
    fi
  fi
  # Also without the unit (a failed or half-done install): remove our rules
  # with the settings they were installed with.
  if [ "$staging" = 1 ]; then
    echo "would run: $prefix/l7inspect-init --remove (with $conf_dir/init.env)"
  elif [ -x "$prefix/l7inspect-init" ]; then
    echo "run: $prefix/l7inspect-init --remove"
    (
      set -a
      # shellcheck disable=SC1091
      [ ! -r "$conf_dir/init.env" ] || . "$conf_dir/init.env"
      set +a
      "$prefix/l7inspect-init" --remove
    ) || die "l7inspect-init --remove failed: the rules may still be installed (see above)"
  fi
  for u in "${units[@]}"; do
    if [ -e "$root$unit_dir/$u" ]; then echo "remove: $root$unit_dir/$u"; rm -f "$root$unit_dir/$u"; fi
  done
  reload
  for b in "${binaries[@]}" l7inspect-wait-ready; do
    if [ -e "$root$prefix/$b" ]; then echo "remove: $root$prefix/$b"; rm -f "$root$prefix/$b"; fi
  done
  if [ "$purge" = 1 ]; then
    if [ -e "$root$conf_dir" ]; then echo "remove: $root$conf_dir"; rm -rf "$root$conf_dir"; fi
    if [ "$staging" = 1 ]; then
      echo "would run: userdel $user; groupdel $user (if they exist)"
    else
      if getent passwd "$user" >/dev/null; then
        system userdel "$user" || die "userdel $user failed (see above): is a process still running as $user?"
      fi
      if getent group "$user" >/dev/null; then
        system groupdel "$user" || die "groupdel $user failed (see above)"
      fi
    fi
  else
    [ ! -e "$root$conf_dir" ] || echo "kept: $root$conf_dir (remove it with --uninstall --purge)"
  fi
  echo "l7inspect uninstalled${root:+ from $root}"
  exit 0
fi

# ---------------------------------------------------------------------------
# The binaries.
if [ -z "$bin_dir" ]; then
  [ -f "$repo/Cargo.toml" ] || die "not in the l7inspect repository: give --bin-dir DIR"
  if command -v cargo >/dev/null; then
    echo "run: cargo build --release --locked -p l7inspect-sidecar -p l7inspect-init"
    (cd "$repo" && cargo build --release --locked -p l7inspect-sidecar -p l7inspect-init) ||
      die "cargo build failed (see above)"
  fi
  bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
  [ -d "$bin_dir" ] || die "no cargo and no $bin_dir: build the binaries, or give --bin-dir DIR"
fi
for b in "${binaries[@]}"; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b: no such executable"
  "$bin_dir/$b" --version >/dev/null 2>&1 || die "$bin_dir/$b --version failed: not a binary for this machine?"
done
wait_ready="$here/../scripts/l7inspect-wait-ready"
[ -x "$wait_ready" ] || die "$wait_ready: no such executable"

# The user and group, UID/GID 2102 (the init's default --proxy-uid).
if [ "$staging" = 1 ]; then
  echo "would run: groupadd --system --gid $uid $user; useradd --system --uid $uid --gid $uid --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $user (unless they exist)"
else
  # Check both before creating either, so that a conflict changes nothing.
  need_group=0
  need_user=0
  if getent group "$user" >/dev/null; then
    gid="$(getent group "$user" | cut -d: -f3)"
    [ "$gid" = "$uid" ] || die "group $user exists with GID $gid, not $uid"
  elif getent group "$uid" >/dev/null; then
    die "GID $uid is taken by group $(getent group "$uid" | cut -d: -f1): free it, l7inspect needs it"
  else
    need_group=1
  fi
  if getent passwd "$user" >/dev/null; then
    [ "$(id -u "$user")" = "$uid" ] || die "user $user exists with UID $(id -u "$user"), not $uid"
  elif getent passwd "$uid" >/dev/null; then
    die "UID $uid is taken by user $(getent passwd "$uid" | cut -d: -f1): free it, l7inspect needs it"
  else
    need_user=1
  fi
  [ "$need_group" = 0 ] || system groupadd --system --gid "$uid" "$user"
  [ "$need_user" = 0 ] || system useradd --system --uid "$uid" --gid "$uid" --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
fi

# The files. "changed" (and "was_active") tell whether to restart the units.
changed=0
was_active=0
if [ "$staging" = 0 ] && [ "$start" = 1 ] && systemctl is-active --quiet "${units[0]}"; then
  was_active=1
fi
put() { # put MODE SRC DEST: install SRC as DEST unless it is already the same
  local mode="$1" src="$2" dest="$root$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    echo "unchanged: $dest"
  else
    echo "install: $dest"
    install -D -m "$mode" "$src" "$dest"
    changed=1
  fi
}
for b in "${binaries[@]}"; do put 0755 "$bin_dir/$b" "$prefix/$b"; done
put 0755 "$wait_ready" "$prefix/l7inspect-wait-ready"
for u in "${units[@]}"; do put 0644 "$here/systemd/$u" "$unit_dir/$u"; done
for e in sidecar.env init.env; do
  if [ -e "$root$conf_dir/$e" ]; then
    echo "kept: $root$conf_dir/$e (never overwritten)"
  else
    echo "install: $root$conf_dir/$e"
    install -D -m 0644 "$here/$e" "$root$conf_dir/$e"
  fi
done

reload
if [ "$start" = 1 ]; then
  unit_files enable "${units[@]}"
  if [ "$staging" = 1 ]; then
    echo "would run: systemctl restart ${units[0]} (only if it was running and a file changed)"
    echo "would run: systemctl start ${units[*]}"
  else
    if [ "$changed" = 1 ] && [ "$was_active" = 1 ]; then
      # An upgrade: restarting the sidecar restarts the init unit too
      # (BindsTo=), so the rules come down before and back after it.
      system systemctl restart "${units[0]}"
    fi
    system systemctl start "${units[@]}"
    system systemctl is-active "${units[@]}"
  fi
else
  unit_files enable "${units[@]}"
fi
echo "l7inspect installed${root:+ into $root}"
