#!/usr/bin/env bash
# Where Aegis allocates on the request path: `valgrind --tool=dhat` over one
# `aegis run` (`workers: 0`, one route to one `aegis-loadgen backend`), then
# every allocation site hit at least once per request, with its count per
# request, its size and the first frames of Aegis, hyper or http that are not
# the allocator's own. The counts are exact (dhat sees every malloc), so this
# is the list to work down; bench/callgrind.sh gives the totals against
# nginx and HAProxy.
#
# dhat sees only malloc: the `aegis` binary is built here with
# `--features system-alloc` (glibc malloc instead of mimalloc) into its own
# target directory, so the main build is left alone.
#
# Environment:
#   N        measured requests (5000), after 500 warm-up requests
#   LOG      access_log setting ("off"; e.g. "/tmp/access.log")
#   SAMPLE   sample.capacity (10000, the default; 100 for the steady state,
#            see bench/callgrind.sh)
#   TARGET   target directory for the system-alloc build (target/system-alloc)
#   BASE_PORT first port used (19600)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-5000}
LOG=${LOG:-off}
SAMPLE=${SAMPLE:-10000}
TARGET=${TARGET:-target/system-alloc}
BASE_PORT=${BASE_PORT:-19600}
BACKEND_PORT=$BASE_PORT
PROXY_PORT=$((BASE_PORT + 1))

command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p aegis-loadgen
cargo build --release -q -p aegis-proxy --bin aegis --features system-alloc --target-dir "$TARGET"
AEGIS=$TARGET/release/aegis
LOADGEN=target/release/aegis-loadgen

WORK=$(mktemp -d /tmp/aegis-alloc-sites.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/cfg"
cat >"$WORK/cfg/aegis.yaml" <<CONF
listen: ["127.0.0.1:$PROXY_PORT"]
admin: "off"
access_log: "$LOG"
workers: 0
state_dir: "$WORK/state"
sample: { capacity: $SAMPLE }
CONF
cat >"$WORK/cfg/routes.yaml" <<CONF
upstreams:
  - name: backend
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
routes:
  - name: all
    match: { path_prefix: "/" }
    upstream: backend
CONF

wait_port() {
	for _ in $(seq 1 600); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing on port $1" >&2
	return 1
}

"$LOADGEN" backend --listen "127.0.0.1:$BACKEND_PORT" --threads 1 >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
wait_port "$BACKEND_PORT"
valgrind --tool=dhat --dhat-out-file="$WORK/dhat.json" "$AEGIS" run --config-dir "$WORK/cfg" 2>"$WORK/vg.log" &
pid=$!
PIDS+=($pid)
wait_port "$PROXY_PORT" || { tail -5 "$WORK/vg.log" >&2; exit 1; }
"$LOADGEN" run --target "http://127.0.0.1:$PROXY_PORT/" -n 500 -c 1 -t 1 --no-live --fail-on-error >/dev/null
"$LOADGEN" run --target "http://127.0.0.1:$PROXY_PORT/" -n "$N" -c 1 -t 1 --no-live --fail-on-error --timeout 30s >"$WORK/load.log"
kill -INT "$pid"
wait "$pid" || true

# dhat's totals cover the whole run; a site hit once per request shows up
# N + 500 times, start-up sites far fewer.
python3 - "$WORK/dhat.json" "$((N + 500))" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
n = float(sys.argv[2])
ft = d["ftbl"]
skip = re.compile(r"library/alloc|library/core|UnknownInlinedFun|\?\?\?|hashbrown|rt\.rs|"
                  r"alloc::|raw_vec|bytes_mut\.rs|bytes\.rs:|spec_|vg_replace|vgpreload")
pps = sorted(d["pps"], key=lambda p: -p["tbk"])
print(f"{n:.0f} requests; all blocks / requests = {sum(p['tbk'] for p in pps) / n:.1f}")
shown = 0.0
for p in pps:
    if p["tbk"] < n * 0.45:
        break
    shown += p["tbk"]
    frames = [re.sub(r"^0x[0-9A-F]+: ", "", ft[i]) for i in p["fs"]]
    useful = [f for f in frames if not skip.search(f)]
    print(f"{p['tbk'] / n:5.2f}/req {p['tb'] / p['tbk']:7.0f} B  " + "  <  ".join(x[:80] for x in useful[:3]))
print(f"per request at these sites: {shown / n:.1f}")
PY
