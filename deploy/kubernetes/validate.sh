#!/usr/bin/env bash
# Validate the manifests in deploy/kubernetes offline (see validate.py), and
# the output of `l7inspect-sidecar inject` on testdata/app.yaml and
# testdata/workloads.yaml.
# Needs kubernetes-validate (pip install kubernetes-validate==1.37.0) in
# $PYTHON (default python3), and cargo to build the sidecar (or the binary in
# $L7INSPECT_SIDECAR). As root, runs the validator in a fresh network
# namespace, so a validator that reached for the network would fail here.
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"

injected="$(mktemp -d)"
trap 'rm -rf "$injected"' EXIT
if [ -n "${L7INSPECT_SIDECAR:-}" ]; then
  sidecar=("$L7INSPECT_SIDECAR")
else
  cargo build -q -p l7inspect-sidecar
  sidecar=(cargo run -q -p l7inspect-sidecar --)
fi
for name in app workloads; do
  echo "inject testdata/$name.yaml:"
  "${sidecar[@]}" inject "testdata/$name.yaml" >"$injected/$name.yaml" 2>"$injected/summary"
  sed 's/^/  /' "$injected/summary"
done

if unshare -n true 2>/dev/null; then
  echo "validating without network (unshare -n)"
  unshare -n "$python" validate.py "$injected"/app.yaml "$injected"/workloads.yaml
else
  echo "validating (cannot unshare the network here: not root)"
  "$python" validate.py "$injected"/app.yaml "$injected"/workloads.yaml
fi
