#!/usr/bin/env python3
"""Validate deploy/kubernetes against the Kubernetes JSON schemas, offline.

Uses kubernetes-validate (PyPI), which bundles the schemas of every
Kubernetes version it supports, so nothing is fetched at validation time
(validate.sh runs this in a network namespace without interfaces to prove
it). Every manifest listed in kustomization.yaml is validated strictly
(unknown fields are errors) against the oldest and the newest version we
support; a kind without a schema is an error, not the library's warning.

So that the validator cannot silently pass everything, every
testdata/invalid-*.yaml must fail; if one passes, this script fails.

Files given as arguments (validate.sh passes the output of
`l7inspect-sidecar inject`) are validated the same way, and every workload
in them must have the l7inspect-init and l7inspect-sidecar init containers
unless it is a hostNetwork pod or opted out.

Exit code 0 when all holds, 1 otherwise.
"""

import pathlib
import sys

import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
# 1.29: native sidecars (init containers with restartPolicy: Always) are on
# by default. The newest is the newest schema the pinned package carries.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
IMAGES = {"l7inspect/sidecar:VERSION", "l7inspect/init:VERSION"}


def errors_of(path):
    """Validation errors of every document in `path`, as strings."""
    errors = []
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        return [f"not YAML: {e}"]
    if not docs:
        return ["no documents"]
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                errors.append(f"{name} (Kubernetes {version}): {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{name} (Kubernetes {version}): no schema for this kind and apiVersion")
    return errors


def images_of(node):
    """Every `image` value in a parsed manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from images_of(value)
    elif isinstance(node, list):
        for item in node:
            yield from images_of(item)


WORKLOAD_TEMPLATES = {
    "Deployment": ["spec", "template"],
    "StatefulSet": ["spec", "template"],
    "DaemonSet": ["spec", "template"],
    "ReplicaSet": ["spec", "template"],
    "ReplicationController": ["spec", "template"],
    "Job": ["spec", "template"],
    "CronJob": ["spec", "jobTemplate", "spec", "template"],
    "Pod": [],
}


def not_injected(path):
    """Workloads in `path` without l7inspect's two init containers."""
    missing = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict) or doc.get("kind") not in WORKLOAD_TEMPLATES:
            continue
        template = doc
        for key in WORKLOAD_TEMPLATES[doc["kind"]]:
            template = template.get(key) or {}
        spec = template.get("spec") or {}
        annotations = {**(doc.get("metadata") or {}).get("annotations", {}),
                       **(template.get("metadata") or {}).get("annotations", {})}
        if spec.get("hostNetwork") or annotations.get("l7inspect.io/inject") == "disabled":
            continue
        init = [c.get("name") for c in spec.get("initContainers") or []]
        if init[:2] != ["l7inspect-init", "l7inspect-sidecar"]:
            missing.append(f"{doc['kind']}/{doc.get('metadata', {}).get('name')}")
    return missing


def main():
    failed = False
    for arg in sys.argv[1:]:
        path = pathlib.Path(arg)
        errors = errors_of(path) + [f"{w}: not injected" for w in not_injected(path)]
        for error in errors:
            print(f"FAIL inject output {path.name}: {error}")
        if errors:
            failed = True
        else:
            print(f"ok   inject output {path.name} (Kubernetes {', '.join(VERSIONS)}, strict)")
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    listed = kustomization.get("resources", [])
    present = sorted(p.name for p in HERE.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in sorted(set(present) - set(listed)):
        print(f"FAIL {name}: not listed in kustomization.yaml resources")
        failed = True
    for name in listed:
        path = HERE / name
        if not path.is_file():
            print(f"FAIL {name}: listed in kustomization.yaml but missing")
            failed = True
            continue
        errors = errors_of(path)
        for error in errors:
            print(f"FAIL {name}: {error}")
        ours = {i for d in yaml.safe_load_all(path.read_text()) for i in images_of(d)
                if i.startswith("l7inspect/")}
        for image in sorted(ours - IMAGES):
            print(f"FAIL {name}: image {image}: expected one of {sorted(IMAGES)}")
            errors.append(image)
        if errors:
            failed = True
        else:
            print(f"ok   {name} (Kubernetes {', '.join(VERSIONS)}, strict)")

    negatives = sorted((HERE / "testdata").glob("invalid-*.yaml"))
    if not negatives:
        print("FAIL testdata: no invalid-*.yaml negative checks found")
        failed = True
    for path in negatives:
        errors = errors_of(path)
        if errors:
            print(f"ok   testdata/{path.name} rejected: {errors[0]}")
        else:
            print(f"FAIL testdata/{path.name}: an invalid manifest passed validation")
            failed = True

    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
