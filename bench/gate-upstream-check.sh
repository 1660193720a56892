#!/usr/bin/env bash
# Verdict time the upstream check adds (docs/GATE.md, "Upstream check"):
# `aegis check` (the gate's sandbox + upstream check + verdict code) of a
# 1000-route set with a 10000-request sample against a real local origin
# (a Python HTTP server that serves Host example.com under /p/ and answers
# 404 otherwise), with the check on and off, for a one-route edit, an edit
# of every route (the request cap is reached) and a Host rewrite of every
# route (rejected).
#
#   bash bench/gate-upstream-check.sh
# Prints one line per case: verdict, elapsed, requests sent, pairs checked.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --release -p aegis-proxy -p aegis-sandbox
AEGIS="$CARGO_TARGET_DIR/release/aegis"
work=$(mktemp -d)
origin_pid=""
cleanup() { [ -n "$origin_pid" ] && kill "$origin_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cat >"$work/origin.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("host", "").split(":")[0] == "example.com" and self.path.startswith("/p/")
        body = (b"page " + self.path.encode()) if ok else b"no such page"
        self.send_response(200 if ok else 404)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_HEAD = do_GET
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
python3 "$work/origin.py" >"$work/port" &
origin_pid=$!
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(head -1 "$work/port")

python3 - "$work" "$port" <<'PY'
import json, os, random, sys
work, port = sys.argv[1], sys.argv[2]
random.seed(1)
n = 1000
def write(name, edit, check):
    d = os.path.join(work, name)
    os.makedirs(d)
    with open(os.path.join(d, "aegis.yaml"), "w") as f:
        f.write("gate:\n  sandbox: { memory: 2GiB, deadline: 60s, upstream_check: { enabled: %s } }\n" % check)
    with open(os.path.join(d, "routes.yaml"), "w") as f:
        f.write(f"upstreams:\n  - name: app\n    endpoints: [\"127.0.0.1:{port}\"]\nroutes:\n")
        for i in range(n):
            f.write(f"  - name: r{i}\n    match: {{ path_prefix: \"/p/{i}/\" }}\n    upstream: app\n")
            if edit == "all" or (edit == "one" and i == 0):
                f.write("    request_headers: { set: { x-edge: \"1\" } }\n")
            if edit == "host":
                f.write("    host_rewrite: app.internal\n")
for check in ("true", "false"):
    write(f"base-{check}", "none", check)
    for edit in ("one", "all", "host"):
        write(f"{edit}-{check}", edit, check)
with open(os.path.join(work, "sample.jsonl"), "w") as f:
    for k in range(10000):
        i = 0 if k % 100 == 0 else random.randrange(n)
        f.write(json.dumps({"method": "GET", "host": "example.com", "path": f"/p/{i}/item{k % 7}",
            "headers": [["user-agent", "Mozilla/5.0"], ["accept", "*/*"]],
            "status": 200, "route": f"r{i}"}) + "\n")
PY

printf '%-6s %-6s %-16s %-9s %-5s %s\n' edit check verdict elapsed_s sent checked
for check in true false; do
  for edit in one all host; do
    out=$("$AEGIS" check --config-dir "$work/$edit-$check" --baseline "$work/base-$check" \
          --sample "$work/sample.jsonl" --json || true)
    python3 -c '
import json, sys
d = json.loads(sys.stdin.read()); r = d.get("report") or {}; u = r.get("upstream_check") or {}
print("%-6s %-6s %-16s %-9.3f %-5s %s" % (sys.argv[1], sys.argv[2], d["verdict"]["reason"] or "accept",
  d["elapsed_s"], u.get("sent", "-"), u.get("checked", "-")))' "$edit" "$check" <<<"$out"
  done
done
