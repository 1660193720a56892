#!/usr/bin/env bash
# Renders deploy/kubernetes/ (kubectl kustomize) and validates it offline:
# the overlays `staged` and `local-gate`, and `local-gate` with the
# host-network option, and `local-gate` with the halt option, against the Kubernetes schemas (the PyPI package
# kubernetes-validate bundles them) and Flagger's CRD schemas (vendored in
# schemas/), then the properties docs/FLEET.md relies on (validate.py).
# Each config directory is judged with `aegis check` when the binary is
# built. Run by proxy/tests/fleet.rs; .ci/install-deps installs the tools.
#
#   deploy/kubernetes/validate.sh            every overlay
#   AEGIS_K8S_VENV=dir                       the venv with kubernetes-validate
#                                            (default ~/.cache/aegis-k8s-venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${AEGIS_K8S_VENV:-$HOME/.cache/aegis-k8s-venv}"
k8s_version="${AEGIS_K8S_VERSION:-1.32.0}"

command -v kubectl >/dev/null || { echo "kubectl is not installed (run .ci/install-deps)" >&2; exit 1; }
[ -x "$venv/bin/python" ] || { echo "no $venv (run .ci/install-deps)" >&2; exit 1; }
"$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' \
    || { echo "kubernetes-validate missing in $venv (run .ci/install-deps)" >&2; exit 1; }

out="$(mktemp -d)"
# A throw-away overlay for the host-network option: it must sit inside the
# tree (kustomize loads nothing from outside its root).
extra="$here/overlays/.validate-host-network"
halt="$here/overlays/.validate-halt"
trap 'rm -rf "$out" "$extra" "$halt"' EXIT
mkdir -p "$extra" "$halt"
cat >"$halt/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../local-gate
components:
  - ../../options/halt
YAML
cat >"$extra/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../local-gate
components:
  - ../../options/host-network
YAML

echo "kubectl: $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
for o in staged local-gate .validate-host-network .validate-halt; do
    name="${o#.validate-}"
    [ "$name" = host-network ] && name=local-gate+host-network
    [ "$name" = halt ] && name=local-gate+halt
    kubectl kustomize "$here/overlays/$o" >"$out/$name.yaml"
    "$venv/bin/python" "$here/validate.py" "$name" "$out/$name.yaml" "$k8s_version"
done

aegis="$root/target/release/aegis"
[ -x "$aegis" ] || aegis="$root/target/debug/aegis"
if [ -x "$aegis" ]; then
    for o in staged local-gate; do
        "$aegis" check --config-dir "$here/overlays/$o/config" >/dev/null \
            || { echo "aegis check: overlays/$o/config does not pass" >&2; exit 1; }
        echo "aegis check: overlays/$o/config ok"
    done
fi
