#!/usr/bin/env bash
# gzip on the way out: Aegis vs nginx compressing the same 100 KB text/html
# response from one backend.
#
# The backend is nginx serving a 100 KB HTML file (numbered paragraphs,
# about 5:1 at level 1). nginx (`gzip on; gzip_comp_level $LEVEL`) and Aegis
# (`compression: { gzip: true, level: $LEVEL }`) each proxy to it with
# keep-alive upstream connections and one worker, pinned to $PROXY_CPU;
# backend and wrk (`-H 'Accept-Encoding: gzip'`) share $LOAD_CPU. Runs
# alternate nginx/aegis for $ROUNDS rounds; the script prints req/s, p50,
# p99 and the bytes of one response per run, then medians and the ratio to
# nginx. A plain (identity) run of each is included for the cost of
# compressing.
#
# Environment:
#   AEGIS     aegis binary (release)   default: target/release/aegis
#   LEVEL     gzip level, both (1: both defaults)
#   CONNS     connections (64)         THREADS  wrk threads (1)
#   SECS      seconds per run (5)      ROUNDS   rounds (3)
#   PROXY_CPU (0)   LOAD_CPU (1)       BASE_PORT first port used (19500)
#
# Build first:
#   cargo build --release -p aegis-proxy
#   bench/compression.sh
set -euo pipefail

AEGIS=${AEGIS:-target/release/aegis}
LEVEL=${LEVEL:-1}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-19500}

BACKEND_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
AEGIS_PORT=$((BASE_PORT + 2))

if [[ ! -x "$AEGIS" ]]; then
	echo "aegis not found at $AEGIS (build with cargo build --release -p aegis-proxy)" >&2
	exit 1
fi
AEGIS=$(realpath "$AEGIS")

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [[ ${#need[@]} -gt 0 ]]; then
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

WORK=$(mktemp -d /tmp/aegis-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers run as another user
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.2
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
	for _ in $(seq 1 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	echo "nothing on port $1" >&2
	exit 1
}

# --- backend --------------------------------------------------------------
mkdir -p "$WORK/backend" "$WORK/nginx" "$WORK/cfg"
{
	echo "<html><body>"
	for i in $(seq 0 4000); do echo "<p id=\"p$i\">paragraph $i, $((i * 7919 % 1000))</p>"; done
} >"$WORK/backend/page.full"
truncate -s 100000 "$WORK/backend/page.full"
mv "$WORK/backend/page.full" "$WORK/backend/page.html"
cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    types { text/html html; }
    server {
        listen 127.0.0.1:$BACKEND_PORT reuseport;
        location = /page.html { root $WORK/backend; }
    }
}
CONF
taskset -c "$LOAD_CPU" "$NGINX" -c "$WORK/backend/nginx.conf" -g 'daemon off;' -p "$WORK/backend" &
PIDS+=($!)

# --- nginx as a compressing proxy -----------------------------------------
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    gzip on;
    gzip_comp_level $LEVEL;
    gzip_vary on;
    upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_buffering on;
        }
    }
}
CONF
taskset -c "$PROXY_CPU" "$NGINX" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' -p "$WORK/nginx" &
PIDS+=($!)

# --- Aegis -----------------------------------------------------------------
cat >"$WORK/cfg/aegis.yaml" <<CONF
listen: ["127.0.0.1:$AEGIS_PORT"]
admin: "off"
access_log: "off"
workers: 1
compression: { gzip: true, level: $LEVEL }
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
taskset -c "$PROXY_CPU" "$AEGIS" run --config-dir "$WORK/cfg" 2>"$WORK/aegis.log" &
PIDS+=($!)

for p in $BACKEND_PORT $NGINX_PORT $AEGIS_PORT; do wait_port "$p"; done
# Both must really compress, and to bytes that decompress to the page.
for port in $NGINX_PORT $AEGIS_PORT; do
	enc=$(curl -s -o /dev/null -D - -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/page.html" | tr -d '\r' | awk -F': ' 'tolower($1) == "content-encoding" { print $2 }')
	[[ $enc == gzip ]] || { echo "port $port: Content-Encoding '$enc', not gzip" >&2; exit 1; }
	cmp -s <(curl -s --compressed "http://127.0.0.1:$port/page.html") "$WORK/backend/page.html" ||
		{ echo "port $port: decompressed body differs" >&2; exit 1; }
done

to_ms() {
	awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'
}
# run_wrk URL [header]: "rps p50_ms p99_ms"
run_wrk() {
	local out rps p50 p99 hdr=()
	[[ -n ${2:-} ]] && hdr=(-H "$2")
	out=$(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "${hdr[@]}" "$1")
	rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
	p50=$(awk '$1 == "50%" { print $2 }' <<<"$out" | to_ms)
	p99=$(awk '$1 == "99%" { print $2 }' <<<"$out" | to_ms)
	errs=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')
	[[ -n $errs ]] && echo "    wrk: $errs" >&2
	echo "$rps $p50 $p99"
}
size_of() { curl -s ${2:+-H "$2"} "$1" | wc -c; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A R B
echo "machine: $(nproc) cores, $(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ *//'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "level=$LEVEL conns=$CONNS wrk_threads=$THREADS secs=$SECS rounds=$ROUNDS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
scenarios=(gzip identity)
for scen in "${scenarios[@]}"; do
	hdr=""
	[[ $scen == gzip ]] && hdr="Accept-Encoding: gzip"
	for round in $(seq 1 "$ROUNDS"); do
		for proxy in nginx aegis; do
			case $proxy in
			nginx) port=$NGINX_PORT ;;
			aegis) port=$AEGIS_PORT ;;
			esac
			url="http://127.0.0.1:$port/page.html"
			res=$(run_wrk "$url" "$hdr")
			B[$scen,$proxy]=$(size_of "$url" "$hdr")
			printf '%-9s round %d %-6s req/s %10s  p50 %7s ms  p99 %7s ms\n' "$scen" "$round" "$proxy" $res
			R[$scen,$proxy]+="$res"$'\n'
		done
	done
done

echo
echo "medians"
printf '%-9s %-6s %10s %9s %9s %9s %8s\n' scenario proxy req/s p50_ms p99_ms bytes vs_nginx
for scen in "${scenarios[@]}"; do
	base=$(awk 'NF { print $1 }' <<<"${R[$scen,nginx]}" | median)
	for proxy in nginx aegis; do
		rps=$(awk 'NF { print $1 }' <<<"${R[$scen,$proxy]}" | median)
		p50=$(awk 'NF { print $2 }' <<<"${R[$scen,$proxy]}" | median)
		p99=$(awk 'NF { print $3 }' <<<"${R[$scen,$proxy]}" | median)
		ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
		printf '%-9s %-6s %10.0f %9s %9s %9s %8s\n' "$scen" "$proxy" "$rps" "$p50" "$p99" "${B[$scen,$proxy]}" "$ratio"
	done
done
