#!/usr/bin/env bash
# aegis-config.sh DIR PORT < routes.yaml: writes DIR/cfg/{aegis,routes}.yaml
# with Aegis listening on 127.0.0.1:PORT (admin and access log off).
set -euo pipefail
mkdir -p "$1/cfg"
cat >"$1/cfg/aegis.yaml" <<YAML
listen: ["127.0.0.1:$2"]
admin: "off"
access_log: "off"
workers: 1
state_dir: "$1/state"
# The scripted servers answer a fixed sequence of connections: the gate's
# TCP probe of new endpoints would take one of them.
gate: { probe_endpoints: false }
YAML
cat >"$1/cfg/routes.yaml"
