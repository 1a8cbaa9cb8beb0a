#!/usr/bin/env bash
# Validate the manifests in deploy/kubernetes offline (see validate.py).
# Needs kubernetes-validate (pip install kubernetes-validate==1.37.0) in
# $PYTHON (default python3). As root, runs the validator in a fresh network
# namespace, so a validator that reached for the network would fail here.
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"
if unshare -n true 2>/dev/null; then
  echo "validating without network (unshare -n)"
  exec unshare -n "$python" validate.py
fi
echo "validating (cannot unshare the network here: not root)"
exec "$python" validate.py
