#!/usr/bin/env python3
"""Validates rendered manifests offline (deploy/kubernetes/validate.sh).

Built-in kinds against the Kubernetes OpenAPI schemas bundled in the
`kubernetes-validate` package (strict: an unknown field fails); Flagger's
kinds against the openAPIV3Schema of its CRDs vendored in schemas/. Then the
properties the fleet guide relies on (docs/FLEET.md), so a manifest that is
valid but no longer does what the guide says fails too.

usage: validate.py NAME RENDERED.yaml [K8S_VERSION]
"""
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = __file__.rsplit("/", 1)[0]


def crd_schemas():
    out = {}
    with open(f"{HERE}/schemas/flagger-crd.yaml") as f:
        for crd in yaml.safe_load_all(f):
            spec = crd["spec"]
            schema = spec["validation"]["openAPIV3Schema"]
            for v in spec["versions"]:
                out[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = schema
    return out


def main():
    name, path = sys.argv[1], sys.argv[2]
    version = sys.argv[3] if len(sys.argv) > 3 else "1.32.0"
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    crds = crd_schemas()
    errors = []
    kinds = {}
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        kinds.setdefault(d.get("kind"), []).append(d)
        if key in crds:
            v = jsonschema.Draft7Validator(crds[key])
            for e in v.iter_errors(d):
                errors.append(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        if d.get("apiVersion", "").endswith("flagger.app/v1beta1"):
            errors.append(f"{what}: no vendored schema for {key}")
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
        except Exception as e:  # an unknown kind or version
            errors.append(f"{what}: {e}")

    def need(cond, why):
        if not cond:
            errors.append(f"{name}: {why}")

    ds = kinds.get("DaemonSet", [{}])[0]
    pod = ds.get("spec", {}).get("template", {}).get("spec", {})
    c = (pod.get("containers") or [{}])[0]
    cms = kinds.get("ConfigMap", [])
    need(len(cms) == 1, "one ConfigMap")
    cm = cms[0] if cms else {}
    cm_name = cm.get("metadata", {}).get("name", "")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    need(vols.get("config", {}).get("configMap", {}).get("name") == cm_name,
         "the DaemonSet mounts the generated ConfigMap")
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "non-root pod")
    need(c.get("securityContext", {}).get("allowPrivilegeEscalation") is False,
         "no privilege escalation")
    need("limits" in c.get("resources", {}) and "requests" in c.get("resources", {}),
         "requests and limits")
    need(vols.get("admin-token", {}).get("secret", {}).get("secretName") == "aegis-admin-token",
         "the admin token from the Secret")
    need("PodDisruptionBudget" in kinds, "a PodDisruptionBudget")
    ru = ds.get("spec", {}).get("updateStrategy", {})
    need(ru.get("type") == "RollingUpdate"
         and ru.get("rollingUpdate", {}).get("maxUnavailable") == 1,
         "RollingUpdate with maxUnavailable 1")
    probe = c.get("readinessProbe", {}).get("httpGet", {}).get("path", "")
    if name.startswith("staged"):
        need(cm.get("immutable") is True, "the ConfigMap is immutable")
        need(cm_name.startswith("aegis-config-") and len(cm_name) > len("aegis-config-"),
             "the ConfigMap name carries its content hash")
        need(probe == "/ready?require=accepted", "readiness on /ready?require=accepted")
        need(ds.get("spec", {}).get("minReadySeconds", 0) >= 30, "minReadySeconds as the bake")
        canary = kinds.get("Canary", [{}])[0]
        need(canary.get("spec", {}).get("targetRef", {}).get("kind") == "DaemonSet",
             "a Flagger Canary targeting the DaemonSet")
        hooks = canary.get("spec", {}).get("analysis", {}).get("webhooks", [])
        need(any(h.get("type") == "pre-rollout" and "/ready" in h.get("url", "") for h in hooks),
             "a pre-rollout webhook on the gate")
        queries = " ".join(t["spec"]["query"] for t in kinds.get("MetricTemplate", []))
        need("aegis_route_requests_total" in queries and "5xx" in queries, "a 5xx-share template")
        need("aegis_request_duration_seconds_bucket" in queries, "a p99 template")
        need("by (version)" in queries or "version)" in queries, "templates per version")
    else:
        need(cm.get("immutable") is not True and cm_name == "aegis-config",
             "a mutable ConfigMap with a fixed name, watched in place")
        need(probe == "/ready", "readiness on /ready")
        env = {e.get("name"): e for e in c.get("env", [])}
        need(env.get("AEGIS_NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {})
             .get("fieldPath") == "spec.nodeName",
             "AEGIS_NODE_NAME from the downward API's spec.nodeName (the hold-off)")
        settings = yaml.safe_load(cm.get("data", {}).get("aegis.yaml", "")) or {}
        window = str(settings.get("gate", {}).get("holdoff", {}).get("window", "0"))
        need(window not in ("0", "0s", "0ms"), "gate.holdoff.window set")
        halted = "aegis-halt" in cm.get("data", {})
        need(halted == name.endswith("+halt"),
             "the halt key only with options/halt" if halted else "the halt key with options/halt")
    if name.endswith("host-network"):
        need(pod.get("hostNetwork") is True, "hostNetwork")
    if errors:
        for e in errors:
            print(f"INVALID {e}")
        sys.exit(1)
    print(f"valid: {name} ({len(docs)} objects: "
          + ", ".join(f"{k} {len(v)}" for k, v in sorted(kinds.items()))
          + f"; Kubernetes {version} schemas, Flagger CRDs)")


if __name__ == "__main__":
    main()
