"""Checks of deploy/docker/docker-compose.yml that the compose-spec schema
cannot express (the schema check is check-jsonschema's vendor.compose-spec).
Needs PyYAML. Usage: python3 compose_check.py docker-compose.yml"""

import sys

import yaml


def main(path):
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    services = doc["services"]
    errors = []

    def err(msg):
        errors.append(msg)

    for name, svc in services.items():
        mode = svc.get("network_mode", "")
        if mode.startswith("service:"):
            owner = mode.split(":", 1)[1]
            if owner not in services:
                err(f"{name}: network_mode names the unknown service {owner}")
            # Docker refuses to publish ports on a container that joined
            # another's namespace: they belong on the owner.
            if svc.get("ports"):
                err(f"{name}: ports on a service with network_mode {mode} (publish them on {owner})")
        for dep in svc.get("depends_on", {}) or {}:
            if dep not in services:
                err(f"{name}: depends_on names the unknown service {dep}")

    # The ordering the README promises.
    def cond(svc, dep):
        return ((services[svc].get("depends_on") or {}).get(dep) or {}).get("condition")

    init, sidecar, app = "l7inspect-init", "l7inspect-sidecar", "app"
    if cond(app, init) != "service_completed_successfully":
        err("app must depend on l7inspect-init with condition service_completed_successfully")
    if cond(init, sidecar) is None:
        err("l7inspect-init must depend on l7inspect-sidecar")
    if "l7inspect-wait-ready" not in " ".join(services[init].get("entrypoint") or []):
        err("l7inspect-init must wait for the sidecar (l7inspect-wait-ready) before installing the rules")
    if services[init].get("restart", "no") != "no":
        err("l7inspect-init runs once: restart must be \"no\"")
    caps = set(services[init].get("cap_add") or [])
    if caps != {"NET_ADMIN", "NET_RAW"}:
        err(f"l7inspect-init needs exactly cap_add NET_ADMIN and NET_RAW, has {sorted(caps)}")
    owners = {services[s].get("network_mode") for s in (init, sidecar, app)}
    if len(owners) != 1 or not next(iter(owners), "").startswith("service:"):
        err(f"the sidecar, the init and the app must share one namespace, have {sorted(map(str, owners))}")
    user = str(services[app].get("user", ""))
    if user.split(":")[0] == "2102":
        err("app must not run as the proxy's UID 2102 (its traffic would not be redirected)")

    for e in errors:
        print(f"compose_check: {path}: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"compose_check: {path}: ok ({len(services)} services)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
