#!/usr/bin/env bash
# Request-smuggling scan of the TLS listener with h2rs (PyPI): H2.CL, H2.TE
# (plain and CRLF-injected) and HTTP/2 request tunnelling, through Aegis
# downgrading HTTP/2 to HTTP/1.1 towards a Python origin.
#
#   tests/conformance/h2rs-scan.sh AEGIS_BINARY
#
# Installs h2rs into a private virtualenv (python3 -m venv, pip from PyPI).
# Exits 1 when h2rs reports a potential vulnerability.
set -euo pipefail
AEGIS=$(realpath "$1")
WORK=$(mktemp -d /tmp/aegis-h2rs.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
python3 -m venv "$WORK/venv" >/dev/null
"$WORK/venv/bin/pip" install -q h2rs==0.0.1
ORIGIN=$(free_port)
TLS=$(free_port)
mkdir -p "$WORK/www" "$WORK/cfg"
echo ok >"$WORK/www/index.html"
(cd "$WORK/www" && exec python3 -m http.server "$ORIGIN" --bind 127.0.0.1 >/dev/null 2>&1) &
PIDS+=($!)
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=scan.test" \
	-addext "subjectAltName=DNS:scan.test" \
	-keyout "$WORK/cfg/scan.key" -out "$WORK/cfg/scan.pem" 2>/dev/null
cat >"$WORK/cfg/aegis.yaml" <<YAML
listen: ["127.0.0.1:$(free_port)"]
listen_tls: ["127.0.0.1:$TLS"]
tls_unknown_sni: default_certificate
admin: "off"
access_log: "off"
workers: 1
YAML
cat >"$WORK/cfg/routes.yaml" <<YAML
tls:
  - { server_names: [scan.test], certificate: scan.pem, key: scan.key, default: true }
upstreams:
  - name: origin
    endpoints: ["127.0.0.1:$ORIGIN"]
routes:
  - name: all
    match: { path_prefix: "/" }
    upstream: origin
YAML
"$AEGIS" run --config-dir "$WORK/cfg" 2>"$WORK/aegis.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$TLS") 2>/dev/null && break
	sleep 0.05
done
# h2rs stops at the first connection the server closes on it (which is how
# the HTTP/2 layer answers a header with CR/LF in it), so each detection runs
# on its own here; a closed connection counts as refused.
"$WORK/venv/bin/python" - "$TLS" <<'PY'
import sys
import h2rs.h2rs as m
m.hostname, m.tlsport, m.timeout = "127.0.0.1", int(sys.argv[1]), 3
m.user_agent = "aegis-h2rs-scan"
m.check()
found = False
for name in ["h2cl_detect", "h2clcrlf_detect", "h2te_detect", "h2tecrlf_detect", "h2tunnel_detect"]:
    try:
        hit = getattr(m, name)()
        verdict = "POTENTIALLY VULNERABLE" if hit else "not vulnerable"
    except Exception as e:  # the server closed the connection on the probe
        hit, verdict = False, f"refused ({type(e).__name__})"
    found |= bool(hit)
    print(f"{name}: {verdict}")
sys.exit(1 if found else 0)
PY
echo "h2rs: nothing found"
