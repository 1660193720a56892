#!/usr/bin/env bash
# aegis-loadgen vs wrk, same target, same connections and threads.
#
# Starts nginx (worker_processes 1, `return 200 "ok"`) on a loopback port with
# a private config, then runs wrk and aegis-loadgen against it, alternating
# which goes first, for $ROUNDS rounds of $SECS seconds. nginx is pinned to
# one core and the load tool to another (taskset), so the tools are compared
# on equal footing. Prints each round and the median requests/s ratio
# aegis-loadgen / wrk.
#
# Environment:
#   AEGIS_LOADGEN  path of the aegis-loadgen binary (release build)
#                  default: target/release/aegis-loadgen
#   CONNS          connections (default 50)      THREADS  threads (default 1)
#   ROUNDS         rounds (default 5)            SECS     seconds per run (default 5)
#   PORT           nginx port (default 18080)
#   NGINX_CPU      core for nginx (default 0)    LOAD_CPU core for the load tool (default 1)
#
# Build first:
#   CARGO_TARGET_DIR=target-loadgen cargo build --release -p aegis-loadgen
#   AEGIS_LOADGEN=target-loadgen/release/aegis-loadgen bench/loadgen-vs-wrk.sh
set -euo pipefail

AEGIS_LOADGEN=${AEGIS_LOADGEN:-target/release/aegis-loadgen}
CONNS=${CONNS:-50}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-5}
PORT=${PORT:-18080}
NGINX_CPU=${NGINX_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

if [[ ! -x "$AEGIS_LOADGEN" ]]; then
    echo "aegis-loadgen not found at $AEGIS_LOADGEN (set AEGIS_LOADGEN or build it with" >&2
    echo "  cargo build --release -p aegis-loadgen)" >&2
    exit 1
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
if (( ${#missing[@]} )); then
    echo "installing ${missing[*]} from Debian" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

PIN_NGINX=()
PIN_LOAD=()
if command -v taskset >/dev/null 2>&1 && (( $(nproc) >= 2 )); then
    PIN_NGINX=(taskset -c "$NGINX_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
else
    echo "warning: fewer than 2 cores or no taskset: not pinning" >&2
fi

TMP=$(mktemp -d)
NGINX_PID=""
cleanup() {
    if [[ -n "$NGINX_PID" ]]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/tmp"
cat > "$TMP/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path $TMP/tmp/body;
    proxy_temp_path $TMP/tmp/proxy;
    fastcgi_temp_path $TMP/tmp/fastcgi;
    uwsgi_temp_path $TMP/tmp/uwsgi;
    scgi_temp_path $TMP/tmp/scgi;
    server {
        listen 127.0.0.1:$PORT;
        location / { return 200 "ok"; }
    }
}
CONF

"${PIN_NGINX[@]}" "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" &
NGINX_PID=$!
URL="http://127.0.0.1:$PORT/"
for _ in $(seq 50); do
    if curl -fs "$URL" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fs "$URL" >/dev/null || { echo "nginx did not start:" >&2; cat "$TMP/error.log" >&2; exit 1; }

# Each prints "requests/s cpu_us_per_request" (user + system CPU time of the
# tool divided by the responses it counted).
TIMEFORMAT='%U %S'
run_wrk() {
    { time "${PIN_LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" "$URL" >"$TMP/wrk.out" 2>&1; } 2>"$TMP/wrk.time"
    local rps n
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/wrk.out")
    n=$(awk '/requests in/ { print $1 }' "$TMP/wrk.out")
    awk -v r="$rps" -v n="$n" '{ printf "%s %.2f\n", r, ($1 + $2) * 1e6 / n }' "$TMP/wrk.time"
}

run_aegis() {
    { time "${PIN_LOAD[@]}" "$AEGIS_LOADGEN" run --target "$URL" -c "$CONNS" -t "$THREADS" \
        -d "${SECS}s" --no-live --json "$TMP/aegis.json" >/dev/null 2>&1; } 2>"$TMP/aegis.time"
    local rps n
    rps=$(awk -F': ' '/"throughput_rps"/ { gsub(/,/, "", $2); print $2 }' "$TMP/aegis.json")
    n=$(awk -F': ' '/"responses"/ { gsub(/,/, "", $2); print $2 }' "$TMP/aegis.json")
    awk -v r="$rps" -v n="$n" '{ printf "%s %.2f\n", r, ($1 + $2) * 1e6 / n }' "$TMP/aegis.time"
}

echo "target $URL (nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), worker_processes 1, pinned to CPU $NGINX_CPU)"
echo "load: $CONNS connections, $THREADS thread(s), ${SECS}s per run, pinned to CPU $LOAD_CPU; $(nproc) cores"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %12s %12s %7s %14s %14s\n' round "wrk req/s" "aegis req/s" ratio "wrk cpu us/req" "aegis cpu us/req"
ratios=(); wrks=(); aegises=(); wcpus=(); acpus=()
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then
        read -r w wc < <(run_wrk); sleep 1; read -r a ac < <(run_aegis)
    else
        read -r a ac < <(run_aegis); sleep 1; read -r w wc < <(run_wrk)
    fi
    sleep 1
    ratio=$(awk -v a="$a" -v w="$w" 'BEGIN { printf "%.3f", a / w }')
    printf '%-6s %12.0f %12.0f %7s %14s %14s\n' "$r" "$w" "$a" "$ratio" "$wc" "$ac"
    ratios+=("$ratio"); wrks+=("$w"); aegises+=("$a"); wcpus+=("$wc"); acpus+=("$ac")
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '%-6s %12.0f %12.0f %7s %14s %14s\n' median "$(median "${wrks[@]}")" "$(median "${aegises[@]}")" \
    "$(median "${ratios[@]}")" "$(median "${wcpus[@]}")" "$(median "${acpus[@]}")"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median ratio aegis-loadgen/wrk: $(median "${ratios[@]}")"
