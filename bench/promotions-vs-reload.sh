#!/usr/bin/env bash
# 100 Aegis promotions vs 100 `nginx -s reload` of an equivalent change, each
# under the same wrk load; failed requests and p99 during the changes, and a
# control run of each proxy without changes (p99 baseline).
#
# One backend: a private nginx (worker_processes 1, `return 200 "ok"`).
# In front of it, each on its own port:
#   peer   a private nginx (worker_processes 2, keep-alive upstream) whose
#          `location /` adds `X-Version: N`; a change rewrites nginx.conf with
#          N+1 and runs `nginx -s reload -p … -c …`.
#   Aegis  `aegis run` (workers: 2, access_log off, gate.debounce 100ms,
#          gate.canary_seconds 0: a change lands on every worker at once) on a
#          temp config dir; routes.yaml sets `x-version: "N"` on the route to
#          the backend; a change writes routes.yaml with N+1 atomically
#          (.routes.yaml.tmp, then mv) and polls GET /admin/config until
#          `.version` changes (a change not promoted within $TIMEOUT s counts
#          as a failed promotion).
#
# For each proxy: wrk -t1 -c$CONNS --latency for $DURATION s; the $CHANGES
# changes are spread over it, change i due at $LEAD + i*$INTERVAL s (if a
# change takes longer than $INTERVAL the next one starts as soon as it is
# done, and wrk keeps running until 2 s after the last change). Then each
# proxy runs $DURATION s with no change (control). After every change a
# fresh curl polls the proxy until it answers with the new X-Version
# ("served"). Pinning: proxies (and Aegis's sandbox runner) on $PROXY_CPU,
# wrk and the backend on $LOAD_CPU.
#
# Prints, per proxy: changes done, median time per change ("applied": Aegis
# write → /admin/config version changed; nginx: `nginx -s reload` returned;
# "served": write → a new connection gets the new X-Version), requests,
# failed requests (non-2xx/3xx + socket errors), p50, p99, and the p99 of
# the control run. Exits 1 if Aegis had a failed request or a failed
# promotion.
#
# Environment:
#   AEGIS      aegis binary (release; aegis-sandbox next to it)
#              default: target/release/aegis
#   CHANGES (100)  INTERVAL (0.8 s)  DURATION (90 s)  LEAD (3 s)
#   TIMEOUT (10 s per Aegis promotion)  CONNS (32)
#   PROXY_CPU (0)  LOAD_CPU (1)
#
#   cargo build --release -p aegis-proxy -p aegis-sandbox
#   bench/promotions-vs-reload.sh
set -euo pipefail

AEGIS=${AEGIS:-target/release/aegis}
CHANGES=${CHANGES:-100}
INTERVAL=${INTERVAL:-0.8}
DURATION=${DURATION:-90}
LEAD=${LEAD:-3}
TIMEOUT=${TIMEOUT:-10}
CONNS=${CONNS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

if [[ ! -x "$AEGIS" ]]; then
	echo "aegis not found at $AEGIS (cargo build --release -p aegis-proxy -p aegis-sandbox)" >&2
	exit 2
fi
AEGIS=$(realpath "$AEGIS")
if [[ ! -x "$(dirname "$AEGIS")/aegis-sandbox" && -z ${AEGIS_SANDBOX:-} ]]; then
	echo "aegis-sandbox not found next to $AEGIS" >&2
	exit 2
fi
for tool in wrk curl jq taskset python3; do
	command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 2; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || { echo "nginx is required" >&2; exit 2; }

WORK=$(mktemp -d /tmp/aegis-reload-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers may run as another user
PIDS=()
NAMES=()
WRK_PID=""
cleanup() {
	set +e
	[[ -n $WRK_PID ]] && kill "$WRK_PID" 2>/dev/null
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for _ in $(seq 1 50); do
		alive=0
		for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[[ $alive == 0 ]] && break
		sleep 0.1
	done
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [[ -n ${KEEP_WORK:-} ]]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy of the nginx binary under another name: a concurrent CI job
# on this machine runs `pkill -x nginx` (.ci/install-deps), which would stop
# our instances mid-run. Same binary, same behaviour.
mkdir -p "$WORK/bin"
cp "$NGINX" "$WORK/bin/nginx-bench"
NGINX_VERSION=$("$NGINX" -v 2>&1)
NGINX="$WORK/bin/nginx-bench"

read -r BACKEND_PORT PEER_PORT AEGIS_PORT ADMIN_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')
ADMIN="127.0.0.1:$ADMIN_PORT"

wait_port() {
	for _ in $(seq 1 200); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	echo "nothing on port $1" >&2
	exit 1
}
now() { echo "$EPOCHREALTIME"; }
# Something else on the machine may stop our processes (.ci/install-deps runs
# `pkill -x nginx`): stop with a clear message rather than time out 100 times.
check_alive() {
	local i
	for i in "${!PIDS[@]}"; do
		if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
			echo "ABORT: the ${NAMES[$i]} (pid ${PIDS[$i]}) is gone; was it killed from outside (e.g. pkill -x nginx)?" >&2
			exit 3
		fi
	done
}
elapsed_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }
x_version() { curl -s -m 1 -o /dev/null -w '%header{x-version}' "http://127.0.0.1:$1/" 2>/dev/null || true; }

# --- backend -----------------------------------------------------------------
mkdir -p "$WORK/backend" "$WORK/peer" "$WORK/cfg" "$WORK/state"
cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { return 200 "ok"; }
    }
}
CONF
taskset -c "$LOAD_CPU" "$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" \
	-e "$WORK/backend/error.log" -g 'daemon off;' &
PIDS+=($!) NAMES+=("backend nginx")

# --- peer: nginx as a reverse proxy -------------------------------------------
write_peer_conf() {
	cat >"$WORK/peer/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/peer/nginx.pid;
error_log $WORK/peer/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$PEER_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Version "$1";
        }
    }
}
CONF
}
write_peer_conf 0
taskset -c "$PROXY_CPU" "$NGINX" -p "$WORK/peer" -c "$WORK/peer/nginx.conf" \
	-e "$WORK/peer/error.log" -g 'daemon off;' &
PIDS+=($!) NAMES+=("peer nginx")

# --- Aegis ---------------------------------------------------------------------
cat >"$WORK/cfg/aegis.yaml" <<CONF
listen: ["127.0.0.1:$AEGIS_PORT"]
admin: "$ADMIN"
workers: 2
access_log: "off"
# No canary: a change every 0.8 s would supersede every canary, and the peer
# applies each reload everywhere at once (tests/rollout.rs covers the canary).
gate: { debounce: 100ms, canary_seconds: 0 }
CONF
write_routes() {
	cat >"$WORK/cfg/.routes.yaml.tmp" <<CONF
upstreams:
  - { name: backend, endpoints: ["127.0.0.1:$BACKEND_PORT"] }
routes:
  - name: all
    match: { path_prefix: "/" }
    upstream: backend
    response_headers: { set: { x-version: "$1" } }
CONF
	mv "$WORK/cfg/.routes.yaml.tmp" "$WORK/cfg/routes.yaml"
}
write_routes 0
taskset -c "$PROXY_CPU" "$AEGIS" run --config-dir "$WORK/cfg" --state-dir "$WORK/state" \
	>"$WORK/aegis.log" 2>&1 &
PIDS+=($!) NAMES+=("aegis")

for p in $BACKEND_PORT $PEER_PORT $AEGIS_PORT $ADMIN_PORT; do wait_port "$p"; done
for port in $PEER_PORT $AEGIS_PORT; do
	for _ in $(seq 1 100); do [[ $(x_version "$port") == 0 ]] && break; sleep 0.1; done
	[[ $(x_version "$port") == 0 ]] || { echo "port $port does not answer X-Version: 0" >&2; exit 1; }
done
aegis_version() { curl -s -m 1 "http://$ADMIN/admin/config" | jq -r '.version // empty' 2>/dev/null || true; }

# --- one change ------------------------------------------------------------------
# Sets APPLIED_MS and SERVED_MS ("-" when it did not happen); returns 1 on a
# failed change.
CUR_VERSION=""
change_nginx() {
	local n=$1 t0 t1 t2
	t0=$(now)
	write_peer_conf "$n"
	"$NGINX" -p "$WORK/peer" -c "$WORK/peer/nginx.conf" -e "$WORK/peer/error.log" -s reload
	t1=$(now)
	APPLIED_MS=$(elapsed_ms "$t0" "$t1")
	SERVED_MS=-
	while [[ $(x_version "$PEER_PORT") != "$n" ]]; do
		if (($(elapsed_ms "$t0" "$(now)" | cut -d. -f1) > TIMEOUT * 1000)); then return 1; fi
		sleep 0.01
	done
	SERVED_MS=$(elapsed_ms "$t0" "$(now)")
}
change_aegis() {
	local n=$1 t0 t1 v
	t0=$(now)
	write_routes "$n"
	APPLIED_MS=- SERVED_MS=-
	while :; do
		v=$(aegis_version)
		[[ -n $v && $v != "$CUR_VERSION" ]] && break
		if (($(elapsed_ms "$t0" "$(now)" | cut -d. -f1) > TIMEOUT * 1000)); then return 1; fi
		sleep 0.01
	done
	t1=$(now)
	CUR_VERSION=$v
	APPLIED_MS=$(elapsed_ms "$t0" "$t1")
	while [[ $(x_version "$AEGIS_PORT") != "$n" ]]; do
		if (($(elapsed_ms "$t0" "$(now)" | cut -d. -f1) > TIMEOUT * 1000)); then return 1; fi
		sleep 0.01
	done
	SERVED_MS=$(elapsed_ms "$t0" "$(now)")
}

# --- one run: wrk for DURATION s, with or without changes ------------------------
# Writes $WORK/<name>.wrk and, with changes, $WORK/<name>.changes
# (index applied_ms served_ms ok).
VERSION_N=0
run() {
	local proxy=$1 mode=$2 name="$1-$2" port start due i ok
	case $proxy in nginx) port=$PEER_PORT ;; aegis) port=$AEGIS_PORT ;; esac
	# Long -d; SIGINT stops wrk and it prints its results for the time it ran.
	taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$((DURATION + 600))s" --timeout 2s --latency \
		"http://127.0.0.1:$port/" >"$WORK/$name.wrk" 2>&1 &
	WRK_PID=$!
	start=$(now)
	if [[ $mode == changes ]]; then
		: >"$WORK/$name.changes"
		for i in $(seq 1 "$CHANGES"); do
			due=$(awk -v s="$start" -v l="$LEAD" -v k="$INTERVAL" -v i="$i" 'BEGIN { printf "%.6f", s + l + (i - 1) * k }')
			wait_s=$(awk -v d="$due" -v n="$(now)" 'BEGIN { w = d - n; printf "%.6f", (w > 0 ? w : 0) }')
			sleep "$wait_s"
			check_alive
			VERSION_N=$((VERSION_N + 1))
			ok=1
			"change_$proxy" "$VERSION_N" || ok=0
			echo "$i $APPLIED_MS $SERVED_MS $ok" >>"$WORK/$name.changes"
			((ok)) || echo "  $name: change $i (X-Version $VERSION_N) failed: applied=$APPLIED_MS served=$SERVED_MS" >&2
		done
		sleep 2
	fi
	# Run until DURATION s have passed (or now, if the changes took longer).
	rest=$(awk -v s="$start" -v d="$DURATION" -v n="$(now)" 'BEGIN { w = s + d - n; printf "%.6f", (w > 0 ? w : 0) }')
	sleep "$rest"
	kill -INT "$WRK_PID"
	wait "$WRK_PID" || true
	WRK_PID=""
	check_alive
}

# --- parse wrk --------------------------------------------------------------------
to_ms() {
	awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } else if (v ~ /m$/) { sub(/m$/,"",v); v=v*60000 } else if (v == "") { v = -1 } printf "%.2f", v }'
}
# "requests secs failed non2xx connect read write timeout p50_ms p99_ms"
parse_wrk() {
	local f=$1 reqs secs non2xx conn rd wr to p50 p99
	reqs=$(awk '/requests in/ { print $1 }' "$f")
	secs=$(awk '/requests in/ { s = $4; sub(/,$/, "", s); print s }' "$f" | to_ms | awk '{ printf "%.1f", $1 / 1000 }')
	non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$f")
	read -r conn rd wr to < <(awk '/Socket errors:/ { gsub(/,/, ""); print $4, $6, $8, $10 }' "$f") || true
	p50=$(awk '$1 == "50%" { print $2 }' "$f" | to_ms)
	p99=$(awk '$1 == "99%" { print $2 }' "$f" | to_ms)
	non2xx=${non2xx:-0} conn=${conn:-0} rd=${rd:-0} wr=${wr:-0} to=${to:-0}
	echo "${reqs:-0} ${secs:-0} $((non2xx + conn + rd + wr + to)) $non2xx $conn $rd $wr $to $p50 $p99"
}
median_col() { awk -v c="$2" '$4 == 1 && $c != "-" { print $c }' "$1" | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
max_col() { awk -v c="$2" '$4 == 1 && $c != "-" { print $c }' "$1" | sort -g | tail -1; }

echo "machine: $(nproc) cores, $(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ *//'), $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$NGINX_VERSION, $(wrk -v 2>&1 | head -1 | awk '{ print "wrk", $2 }'), aegis $AEGIS"
echo "changes=$CHANGES interval=${INTERVAL}s duration=${DURATION}s conns=$CONNS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
echo "ports: backend $BACKEND_PORT, nginx $PEER_PORT, aegis $AEGIS_PORT (admin $ADMIN_PORT)"

CUR_VERSION=$(aegis_version)
for step in nginx:control aegis:control nginx:changes aegis:changes; do
	proxy=${step%%:*} mode=${step##*:}
	echo "$(date -u +%H:%M:%S) $proxy, $mode, load average $(cut -d' ' -f1 /proc/loadavg)" >&2
	run "$proxy" "$mode"
	sleep 2
done

AEGIS_FAILED=0 AEGIS_BAD_CHANGES=0
printf '\n%-6s %8s %11s %11s %10s %9s %8s %8s %8s %8s %11s %12s\n' proxy changes applied_ms served_ms max_served requests failed secs p50_ms p99_ms control_p99 p99/control
for proxy in nginx aegis; do
	read -r reqs secs failed non2xx conn rd wr to p50 p99 < <(parse_wrk "$WORK/$proxy-changes.wrk")
	read -r _ _ _ _ _ _ _ _ _ cp99 < <(parse_wrk "$WORK/$proxy-control.wrk")
	done_ok=$(awk '$4 == 1' "$WORK/$proxy-changes.changes" | wc -l)
	printf '%-6s %4d/%-3d %11s %11s %10s %9s %8s %8s %8s %8s %11s %12s\n' "$proxy" "$done_ok" "$CHANGES" \
		"$(median_col "$WORK/$proxy-changes.changes" 2)" "$(median_col "$WORK/$proxy-changes.changes" 3)" \
		"$(max_col "$WORK/$proxy-changes.changes" 3)" "$reqs" "$failed" "$secs" "$p50" "$p99" "$cp99" \
		"$(awk -v a="$p99" -v b="$cp99" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
	if [[ $proxy == aegis ]]; then AEGIS_FAILED=$failed AEGIS_BAD_CHANGES=$((CHANGES - done_ok)); fi
	echo "        failed = non-2xx $non2xx + connect $conn + read $rd + write $wr + timeout $to" >&2
done
read -r _ _ _ _ _ _ _ _ _ np99 < <(parse_wrk "$WORK/nginx-changes.wrk")
read -r _ _ _ _ _ _ _ _ _ ap99 < <(parse_wrk "$WORK/aegis-changes.wrk")
echo
echo "p99 during changes, aegis / nginx: $(awk -v a="$ap99" -v b="$np99" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
echo "aegis gate: $(curl -s "http://$ADMIN/admin/config" | jq -c '{promotions, rejections, flaps, candidates}')"
echo "applied: aegis = write → /admin/config .version changed; nginx = write + \`nginx -s reload\` returned"
echo "served: write → a new connection answered with the new X-Version (medians over successful changes)"
echo "full wrk output:"
for f in nginx-control nginx-changes aegis-control aegis-changes; do
	echo "--- $f"
	sed -n '/Latency Distribution/,$p' "$WORK/$f.wrk"
done

status=0
if ((AEGIS_FAILED > 0)); then echo "FAIL: aegis had $AEGIS_FAILED failed requests during promotions" >&2; status=1; fi
if ((AEGIS_BAD_CHANGES > 0)); then echo "FAIL: $AEGIS_BAD_CHANGES aegis promotions failed" >&2; status=1; fi
exit $status
