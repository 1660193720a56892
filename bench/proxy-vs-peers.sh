#!/usr/bin/env bash
# Aegis vs nginx vs HAProxy as reverse proxies in front of one fast backend.
#
# The backend is nginx answering `return 200` (a small body, and a 64 KiB one
# from a file). nginx, HAProxy and Aegis each proxy to it with keep-alive
# upstream connections and the same number of workers ($WORKERS: nginx
# worker_processes, HAProxy nbthread, Aegis runtime threads). Each proxy is
# driven by the same wrk load, alternating A/B/C/A/B/C for $ROUNDS rounds,
# and the script prints req/s, p50 and p99 per run, then medians and ratios
# to nginx. With h2load installed it also runs TLS + HTTP/2 (SKIP_H2=1 skips).
#
# Pinning (taskset): proxies on $PROXY_CPU, backend and load generator on
# $LOAD_CPU. On a 2-core machine the backend shares the load generator's
# core, the same for every proxy.
#
# Environment:
#   AEGIS      aegis binary (release)   default: target/release/aegis
#   WORKERS    proxy workers (1)        CONNS    connections (64)
#   THREADS    wrk threads (1)          SECS     seconds per run (5)
#   ROUNDS     rounds (3)               PROXY_CPU (0)   LOAD_CPU (1)
#   BASE_PORT  first port used (19400)
#   ACCESS_LOG 1 adds `nginx-log` and `aegis-log` to the alternation: the
#              same proxies, second instances, logging every request to a
#              file (nginx `combined buffer=64k flush=1s`, Aegis its JSON line,
#              buffered the same way: docs/CONFIG.md). HAProxy has no file
#              log (syslog only) and is not doubled. Default 0.
#
# Build first:
#   cargo build --release -p aegis-proxy
#   AEGIS=target/release/aegis bench/proxy-vs-peers.sh
set -euo pipefail

AEGIS=${AEGIS:-target/release/aegis}
WORKERS=${WORKERS:-1}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-19400}
SKIP_H2=${SKIP_H2:-0}
ACCESS_LOG=${ACCESS_LOG:-0}

BACKEND_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
HAPROXY_PORT=$((BASE_PORT + 2))
AEGIS_PORT=$((BASE_PORT + 3))
NGINX_TLS_PORT=$((BASE_PORT + 4))
HAPROXY_TLS_PORT=$((BASE_PORT + 5))
AEGIS_TLS_PORT=$((BASE_PORT + 6))
NGINX_LOG_PORT=$((BASE_PORT + 7))
NGINX_LOG_TLS_PORT=$((BASE_PORT + 8))
AEGIS_LOG_PORT=$((BASE_PORT + 9))
AEGIS_LOG_TLS_PORT=$((BASE_PORT + 10))
PROXIES=(nginx haproxy aegis)
[[ $ACCESS_LOG == 1 ]] && PROXIES=(nginx nginx-log haproxy aegis aegis-log)

if [[ ! -x "$AEGIS" ]]; then
	echo "aegis not found at $AEGIS (build with cargo build --release -p aegis-proxy)" >&2
	exit 1
fi
AEGIS=$(realpath "$AEGIS")

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
if [[ ${#need[@]} -gt 0 ]]; then
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

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
head -c 65536 /dev/zero | tr '\0' 'x' >"$WORK/backend/64k"
cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT reuseport;
        location = /small { return 200 "hello, world\n"; }
        location = /64k { root $WORK/backend; }
    }
}
CONF
taskset -c "$LOAD_CPU" "$NGINX" -c "$WORK/backend/nginx.conf" -g 'daemon off;' -p "$WORK/backend" &
PIDS+=($!)

# --- certificate for the TLS runs -----------------------------------------
# 30 days: the gate refuses a certificate within gate.policy.tls_expiry_window (7 days).
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=bench.test" \
	-addext "subjectAltName=DNS:bench.test" \
	-keyout "$WORK/cfg/bench.key" -out "$WORK/cfg/bench.pem" 2>/dev/null
cat "$WORK/cfg/bench.pem" "$WORK/cfg/bench.key" >"$WORK/bench.pem.all"

# --- nginx as a proxy ------------------------------------------------------
# start_nginx DIR PORT TLS_PORT ACCESS_LOG_DIRECTIVE
start_nginx() {
	mkdir -p "$1"
	cat >"$1/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $1/nginx.pid;
error_log $1/error.log;
events { worker_connections 4096; }
http {
    $4
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$2;
        listen 127.0.0.1:$3 ssl http2;
        ssl_certificate $WORK/cfg/bench.pem;
        ssl_certificate_key $WORK/cfg/bench.key;
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
	taskset -c "$PROXY_CPU" "$NGINX" -c "$1/nginx.conf" -g 'daemon off;' -p "$1" &
	PIDS+=($!)
}
start_nginx "$WORK/nginx" "$NGINX_PORT" "$NGINX_TLS_PORT" "access_log off;"
if [[ $ACCESS_LOG == 1 ]]; then
	start_nginx "$WORK/nginx-log" "$NGINX_LOG_PORT" "$NGINX_LOG_TLS_PORT" \
		"access_log $WORK/nginx-log/access.log combined buffer=64k flush=1s;"
fi

# --- HAProxy ---------------------------------------------------------------
cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread $WORKERS
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $WORK/bench.pem.all alpn h2,http/1.1
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:$BACKEND_PORT
CONF
taskset -c "$PROXY_CPU" "$HAPROXY" -f "$WORK/haproxy.cfg" -db &
PIDS+=($!)

# --- Aegis -----------------------------------------------------------------
# start_aegis CONFIG_DIR PORT TLS_PORT ACCESS_LOG
start_aegis() {
	mkdir -p "$1"
	cp "$WORK/cfg/bench.pem" "$WORK/cfg/bench.key" "$1/" 2>/dev/null || true
	cat >"$1/aegis.yaml" <<CONF
listen: ["127.0.0.1:$2"]
listen_tls: ["127.0.0.1:$3"]
tls_unknown_sni: default_certificate
admin: "off"
access_log: "$4"
state_dir: "$1-state"
workers: $WORKERS
CONF
	cat >"$1/routes.yaml" <<CONF
tls:
  - { server_names: [bench.test], certificate: bench.pem, key: bench.key, default: true }
upstreams:
  - name: backend
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
routes:
  - name: all
    match: { path_prefix: "/" }
    upstream: backend
CONF
	taskset -c "$PROXY_CPU" "$AEGIS" run --config-dir "$1" 2>"$1.log" &
	PIDS+=($!)
}
start_aegis "$WORK/cfg" "$AEGIS_PORT" "$AEGIS_TLS_PORT" off
if [[ $ACCESS_LOG == 1 ]]; then
	start_aegis "$WORK/cfg-log" "$AEGIS_LOG_PORT" "$AEGIS_LOG_TLS_PORT" "$WORK/aegis-access.log"
fi

ports=($NGINX_PORT $HAPROXY_PORT $AEGIS_PORT)
[[ $ACCESS_LOG == 1 ]] && ports+=($NGINX_LOG_PORT $AEGIS_LOG_PORT)
for p in $BACKEND_PORT "${ports[@]}"; do wait_port "$p"; done
for port in "${ports[@]}"; do
	for path in /small /64k; do
		code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path")
		[[ $code == 200 ]] || { echo "port $port $path: HTTP $code" >&2; exit 1; }
	done
done

# Parse wrk --latency output into "rps p50_ms p99_ms".
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
run_h2load() {
	local out rps
	out=$(taskset -c "$LOAD_CPU" h2load -c"$CONNS" -m 10 -t"$THREADS" -D "$SECS" "$1" 2>/dev/null)
	rps=$(awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) { v=$(i-1); print v } }' <<<"$out")
	# h2load prints "time for request:  min  max  mean  sd  +/- sd": fields 4-8, so the mean is $6 ($5 is the maximum).
	mean=$(awk '/^time for request:/ { print $6 }' <<<"$out" | to_ms)
	echo "${rps:-0} ${mean:-0} -"
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A R
echo "machine: $(nproc) cores, $(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ *//'), $(uname -r)"
echo "access_log=$ACCESS_LOG workers=$WORKERS conns=$CONNS wrk_threads=$THREADS secs=$SECS rounds=$ROUNDS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
scenarios=(small 64k)
[[ $SKIP_H2 == 1 ]] || scenarios+=(h2-small)
for scen in "${scenarios[@]}"; do
	for round in $(seq 1 "$ROUNDS"); do
		for proxy in "${PROXIES[@]}"; do
			case $proxy in
			nginx) port=$NGINX_PORT tport=$NGINX_TLS_PORT ;;
			nginx-log) port=$NGINX_LOG_PORT tport=$NGINX_LOG_TLS_PORT ;;
			haproxy) port=$HAPROXY_PORT tport=$HAPROXY_TLS_PORT ;;
			aegis) port=$AEGIS_PORT tport=$AEGIS_TLS_PORT ;;
			aegis-log) port=$AEGIS_LOG_PORT tport=$AEGIS_LOG_TLS_PORT ;;
			esac
			case $scen in
			small) res=$(run_wrk "http://127.0.0.1:$port/small") ;;
			64k) res=$(run_wrk "http://127.0.0.1:$port/64k") ;;
			h2-small) res=$(run_h2load "https://127.0.0.1:$tport/small") ;;
			esac
			printf '%-9s round %d %-9s req/s %10s  p50 %7s ms  p99 %7s ms\n' "$scen" "$round" "$proxy" $res
			R[$scen,$proxy]+="$res"$'\n'
		done
	done
done

echo
echo "medians (h2-small: p50 column is h2load's mean request time, no p99)"
printf '%-9s %-9s %10s %9s %9s %8s\n' scenario proxy req/s p50_ms p99_ms vs_nginx
for scen in "${scenarios[@]}"; do
	base=$(awk 'NF { print $1 }' <<<"${R[$scen,nginx]}" | median)
	for proxy in "${PROXIES[@]}"; do
		rps=$(awk 'NF { print $1 }' <<<"${R[$scen,$proxy]}" | median)
		p50=$(awk 'NF { print $2 }' <<<"${R[$scen,$proxy]}" | median)
		p99=-
		[[ $scen == h2-* ]] || p99=$(awk 'NF { print $3 }' <<<"${R[$scen,$proxy]}" | median)
		ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
		printf '%-9s %-9s %10.0f %9s %9s %8s\n' "$scen" "$proxy" "$rps" "$p50" "$p99" "$ratio"
	done
done

if [[ $ACCESS_LOG == 1 ]]; then
	echo
	echo "throughput with the access log on, as a share of the same proxy's without (medians)"
	for scen in "${scenarios[@]}"; do
		for proxy in nginx aegis; do
			off=$(awk 'NF { print $1 }' <<<"${R[$scen,$proxy]}" | median)
			on=$(awk 'NF { print $1 }' <<<"${R[$scen,$proxy-log]}" | median)
			awk -v s="$scen" -v p="$proxy" -v a="$on" -v b="$off" \
				'BEGIN { if (b > 0) printf "%-9s %-9s %.3f (%+.1f %%)\n", s, p, a / b, (a / b - 1) * 100 }'
		done
	done
fi
