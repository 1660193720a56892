#!/usr/bin/env bash
# Aegis vs nginx serving static files: a 1 KiB and a 1 MiB file from the
# same directory, over keep-alive HTTP/1.1.
#
# nginx as Debian ships it for files (`sendfile on`, `tcp_nopush on`), one
# worker; Aegis one runtime thread (`workers: 1`), a `static` route on the
# same root. Both pinned to $SERVER_CPU, wrk to $LOAD_CPU. Runs alternate
# nginx/aegis for $ROUNDS rounds; the script prints req/s, p50 and p99 per
# run, then medians and the Aegis/nginx ratio.
#
# Environment:
#   AEGIS      aegis binary (release)   default: target/release/aegis
#   CONNS      connections (64)         THREADS  wrk threads (1)
#   SECS       seconds per run (5)      ROUNDS   rounds (3)
#   SERVER_CPU (0)  LOAD_CPU (1)        BASE_PORT first port used (19500)
#   SHOW_LOG=1 prints the aegis log on exit
#
# Build first:
#   cargo build --release -p aegis-proxy
#   bench/static-files.sh
set -euo pipefail

AEGIS=${AEGIS:-target/release/aegis}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-19500}

NGINX_PORT=$BASE_PORT
AEGIS_PORT=$((BASE_PORT + 1))

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
if [[ ${#need[@]} -gt 0 ]]; then
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

WORK=$(mktemp -d /tmp/aegis-static-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers run as another user
PIDS=()
cleanup() {
	[[ -f $WORK/aegis.log && -n ${SHOW_LOG:-} ]] && cat "$WORK/aegis.log" >&2
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.2
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
	for _ in $(seq 1 600); do # aegis gates its first config (the sandbox) before it listens
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	echo "nothing on port $1" >&2
	exit 1
}

mkdir -p "$WORK/www" "$WORK/nginx" "$WORK/cfg"
chmod 755 "$WORK/www"
head -c 1024 /dev/urandom >"$WORK/www/1k.bin"
head -c 1048576 /dev/urandom >"$WORK/www/1m.bin"
chmod 644 "$WORK/www/"*

# --- nginx, as shipped for files -------------------------------------------
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
    }
}
CONF
taskset -c "$SERVER_CPU" "$NGINX" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' -p "$WORK/nginx" &
PIDS+=($!)

# --- Aegis -----------------------------------------------------------------
cat >"$WORK/cfg/aegis.yaml" <<CONF
listen: ["127.0.0.1:$AEGIS_PORT"]
admin: "off"
access_log: "off"
workers: 1
CONF
cat >"$WORK/cfg/routes.yaml" <<CONF
routes:
  - name: files
    match: { path_prefix: "/" }
    static: { root: "$WORK/www" }
CONF
taskset -c "$SERVER_CPU" "$AEGIS" run --config-dir "$WORK/cfg" --state-dir "$WORK/state" 2>"$WORK/aegis.log" &
PIDS+=($!)

for p in $NGINX_PORT $AEGIS_PORT; do wait_port "$p"; done
for port in $NGINX_PORT $AEGIS_PORT; do
	for path in /1k.bin /1m.bin; do
		size=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$port$path")
		case $path in /1k.bin) want="200 1024" ;; /1m.bin) want="200 1048576" ;; esac
		[[ $size == "$want" ]] || { echo "port $port $path: $size (want $want)" >&2; exit 1; }
	done
done

to_ms() {
	awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'
}
run_wrk() {
	local out rps p50 p99
	out=$(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "$1")
	rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
	p50=$(awk '$1 == "50%" { print $2 }' <<<"$out" | to_ms)
	p99=$(awk '$1 == "99%" { print $2 }' <<<"$out" | to_ms)
	errs=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')
	[[ -n $errs ]] && echo "    wrk: $errs" >&2
	echo "$rps $p50 $p99"
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A R
echo "machine: $(nproc) cores, $(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ *//'), $(uname -r)"
echo "conns=$CONNS wrk_threads=$THREADS secs=$SECS rounds=$ROUNDS server_cpu=$SERVER_CPU load_cpu=$LOAD_CPU"
scenarios=(1k 1m)
for scen in "${scenarios[@]}"; do
	for round in $(seq 1 "$ROUNDS"); do
		for server in nginx aegis; do
			case $server in nginx) port=$NGINX_PORT ;; aegis) port=$AEGIS_PORT ;; esac
			res=$(run_wrk "http://127.0.0.1:$port/$scen.bin")
			printf '%-4s round %d %-6s req/s %10s  p50 %7s ms  p99 %7s ms\n' "$scen" "$round" "$server" $res
			R[$scen,$server]+="$res"$'\n'
		done
	done
done
echo
echo "medians"
printf '%-4s %-6s %10s %9s %9s %9s\n' file server req/s p50_ms p99_ms aegis/nginx
for scen in "${scenarios[@]}"; do
	base=$(awk 'NF { print $1 }' <<<"${R[$scen,nginx]}" | median)
	for server in nginx aegis; do
		rps=$(awk 'NF { print $1 }' <<<"${R[$scen,$server]}" | median)
		p50=$(awk 'NF { print $2 }' <<<"${R[$scen,$server]}" | median)
		p99=$(awk 'NF { print $3 }' <<<"${R[$scen,$server]}" | median)
		ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
		printf '%-4s %-6s %10.0f %9s %9s %9s\n' "$scen" "$server" "$rps" "$p50" "$p99" "$ratio"
	done
done
