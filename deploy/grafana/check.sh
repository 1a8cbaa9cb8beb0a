#!/usr/bin/env bash
# Checks of deploy/grafana with promtool (Debian package `prometheus`):
#   1. alerts.yaml: `promtool check rules` (syntax, PromQL, templates);
#   2. alerts_test.yaml: `promtool test rules` (each alert fires above its
#      threshold and stays quiet below it);
#   3. the dashboard's PromQL: every target's expr, with Grafana's variables
#      replaced ($__rate_interval and $__range by 5m, $job and $instance by
#      .*), written as recording rules to a temporary file that
#      `promtool check rules` parses.
# That the metric and label names exist in the sidecar's /metrics is
# bins/l7inspect-sidecar/tests/grafana.rs's part (cargo test).
#
# Usage: deploy/grafana/check.sh
# Environment: PROMTOOL (default promtool), PYTHON (default python3; the
#   standard library is enough), L7INSPECT_REQUIRE_TOOLS=1: a missing
#   promtool fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")"
promtool="${PROMTOOL:-promtool}"
python="${PYTHON:-python3}"

if ! command -v "$promtool" >/dev/null; then
  if [ "${L7INSPECT_REQUIRE_TOOLS:-0}" = 1 ]; then
    echo "FAIL promtool not found (L7INSPECT_REQUIRE_TOOLS=1; Debian: apt-get install prometheus)" >&2
    exit 1
  fi
  echo "skip deploy/grafana: promtool not found (Debian: apt-get install prometheus)"
  exit 0
fi

failures=0
run() {
  local what="$1"
  shift
  local out
  if out="$("$@" 2>&1)"; then
    echo "ok   $what"
  else
    printf '%s\n' "$out" >&2
    echo "FAIL $what" >&2
    failures=$((failures + 1))
  fi
}

run "alerts.yaml: promtool check rules" "$promtool" check rules alerts.yaml
run "alerts_test.yaml: promtool test rules" "$promtool" test rules alerts_test.yaml

dashboard_rules="$(mktemp --suffix=.yaml)"
trap 'rm -f "$dashboard_rules"' EXIT
# JSON is YAML, so the rules file is written as JSON.
"$python" - l7inspect-sidecar.json >"$dashboard_rules" <<'PY'
import json, sys

with open(sys.argv[1]) as f:
    dashboard = json.load(f)
subst = [("$__rate_interval", "5m"), ("$__range", "5m"), ("$__interval", "1m"),
         ("$job", ".*"), ("$instance", ".*")]
rules = []

def walk(panels):
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in subst:
                expr = expr.replace(var, value)
            if "$" in expr:
                sys.exit(f"panel {panel['title']!r}: unknown variable in {expr!r}")
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}",
                          "expr": expr})
        walk(panel.get("panels", []))

walk(dashboard["panels"])
if not rules:
    sys.exit("no panel has an expr")
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, sys.stdout, indent=1)
PY
run "l7inspect-sidecar.json: every expr parses (promtool check rules)" \
  "$promtool" check rules "$dashboard_rules"

if [ "$failures" -gt 0 ]; then
  echo "deploy/grafana: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy/grafana: all checks passed"
