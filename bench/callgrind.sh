#!/usr/bin/env bash
# User instructions and allocations per request, counted by callgrind: the same
# figures on a busy machine as on a quiet one, so a change shows up as a number
# rather than as a guess read through noise.
#
# One backend (`aegis-loadgen backend`, natively) and, one at a time under
# `valgrind --tool=callgrind`, each proxy in one process with one thread of
# request work: nginx (`master_process off`, `worker_processes 1`), HAProxy
# (`nbthread 1`, `-db`), Aegis (`workers: 0 --threads 1`, the single-process
# mode on a current-thread runtime like a worker's; access log off, then to
# a file; and `aegis-steady`, access log off with `sample.capacity: 100`).
# Each proxy first serves $WARMUP requests (upstream connections opened,
# lazy state built), then its counters are zeroed
# (`callgrind_control -z`), then exactly $N requests go over one keep-alive
# connection (`aegis-loadgen run -n $N -c 1 -t 1`), then the counters are
# dumped (`callgrind_control -d`). Instructions per request = Ir of that dump /
# N. Allocations per request = calls to malloc, calloc, realloc, memalign,
# posix_memalign and aligned_alloc in that dump / N (callgrind counts every
# call; with mimalloc linked in, its mi_malloc family is counted too). The
# load generator and backend run natively; only the proxy is instrumented.
#
# Why `aegis-steady`: the traffic sample (reservoir sampling, capacity 10 000
# by default) keeps every request until it is full, then request n with
# probability 10 000/n, so over this run's 20 500 requests about 83 % are
# sampled (their heads copied and redacted), a share a running proxy only
# sees in its first minutes. With a capacity of 100, 100/n over these
# requests is the share a default process sees after about two million
# requests (10 000/n there): the steady state.
#
# Environment:
#   AEGIS    aegis binary (release)          default: target/release/aegis
#   LOADGEN  aegis-loadgen binary (release)  default: target/release/aegis-loadgen
#   N        measured requests (20000)       WARMUP   requests before (500)
#   PROXIES  which to run ("nginx haproxy aegis aegis-steady aegis-log";
#            add nginx-log for nginx with its access log buffered to a file)
#   BASE_PORT first port used (19500)        KEEP=1   keep the callgrind files
#   AEGIS_THREADS  Aegis's runtime threads (1: a current-thread runtime, the
#            shape of a production worker, `workers: N` with `threads: 1`;
#            before session 11 this script left it at the core count, a
#            multi-thread runtime)
#   VG_OPTS  extra callgrind options, e.g. "--dump-instr=yes" to see which
#            source lines the instructions are on (`callgrind_annotate
#            --auto=yes`; with KEEP=1); the counts do not change
#
# Build first:
#   cargo build --release -p aegis-proxy -p aegis-sandbox -p aegis-loadgen
#   bench/callgrind.sh
set -euo pipefail

AEGIS=${AEGIS:-target/release/aegis}
LOADGEN=${LOADGEN:-target/release/aegis-loadgen}
N=${N:-20000}
WARMUP=${WARMUP:-500}
PROXIES=${PROXIES:-nginx haproxy aegis aegis-steady aegis-log}
BASE_PORT=${BASE_PORT:-19500}
KEEP=${KEEP:-0}
AEGIS_THREADS=${AEGIS_THREADS:-1}

for b in "$AEGIS" "$LOADGEN"; do
	[[ -x $b ]] || { echo "$b not found (cargo build --release -p aegis-proxy -p aegis-sandbox -p aegis-loadgen)" >&2; exit 1; }
done
AEGIS=$(realpath "$AEGIS")
LOADGEN=$(realpath "$LOADGEN")
# `aegis run` starts the gate's runner from beside its binary unless told.
if [[ -z ${AEGIS_SANDBOX:-} && ! -x $(dirname "$AEGIS")/aegis-sandbox ]]; then
	export AEGIS_SANDBOX
	AEGIS_SANDBOX=$(realpath target/release/aegis-sandbox)
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
if [[ ${#need[@]} -gt 0 ]]; then
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

BACKEND_PORT=$BASE_PORT
PROXY_PORT=$((BASE_PORT + 1))

WORK=$(mktemp -d /tmp/aegis-callgrind.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.3
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	if [[ $KEEP == 1 ]]; then echo "callgrind files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_port() {
	for _ in $(seq 1 600); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing on port $1" >&2
	return 1
}
wait_gone() {
	for _ in $(seq 1 600); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -9 "$1" 2>/dev/null || true
}

"$LOADGEN" backend --listen "127.0.0.1:$BACKEND_PORT" --threads 1 >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
wait_port "$BACKEND_PORT" || exit 1

# --- proxy configurations --------------------------------------------------
mkdir -p "$WORK/nginx" "$WORK/nginx-log" "$WORK/aegis" "$WORK/aegis-steady" "$WORK/aegis-log"
cat >"$WORK/nginx/nginx.conf" <<CONF
master_process off;
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 16; }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
CONF
# nginx-log: the same, with the access log on as a production nginx keeps it
# (the default `combined` format, buffered like Aegis's: 64k, flushed each
# second), to compare what logging costs each.
sed -e "s|access_log off;|access_log $WORK/nginx-log/access.log combined buffer=64k flush=1s;|" \
	-e "s|$WORK/nginx/|$WORK/nginx-log/|g" "$WORK/nginx/nginx.conf" >"$WORK/nginx-log/nginx.conf"
cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 1024
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
frontend fe
    bind 127.0.0.1:$PROXY_PORT
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:$BACKEND_PORT
CONF
for v in aegis aegis-steady aegis-log; do
	log='"off"'
	[[ $v == aegis-log ]] && log="\"$WORK/aegis-log/access.log\""
	sample=""
	[[ $v == aegis-steady ]] && sample="sample: { capacity: 100 }"
	cat >"$WORK/$v/aegis.yaml" <<CONF
listen: ["127.0.0.1:$PROXY_PORT"]
admin: "off"
access_log: $log
workers: 0
state_dir: "$WORK/$v/state"
$sample
CONF
	cat >"$WORK/$v/routes.yaml" <<CONF
upstreams:
  - name: backend
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
routes:
  - name: all
    match: { path_prefix: "/" }
    upstream: backend
CONF
done

# Sums Ir and allocator calls of one callgrind dump. Function names are
# compressed ("cfn=(7) malloc" once, "cfn=(7)" after), so ids are mapped first.
count() {
	python3 - "$1" <<'PY'
import re, sys
alloc = {"malloc", "calloc", "realloc", "memalign", "posix_memalign", "aligned_alloc",
         "mi_malloc", "mi_zalloc", "mi_calloc", "mi_realloc", "mi_malloc_aligned",
         "mi_zalloc_aligned", "mi_realloc_aligned"}
names, cur, calls, total = {}, None, 0, 0
pending = None
with open(sys.argv[1], errors="replace") as f:
    for line in f:
        if line.startswith("cfn="):
            m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                pending = names.get(m.group(1), "")
            else:
                pending = line[4:].strip()
        elif line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
        elif line.startswith("calls=") and pending is not None:
            name = pending.split("'")[0]
            if name in alloc:
                calls += int(line[6:].split()[0])
            pending = None
        elif line.startswith("totals:") or line.startswith("summary:"):
            total = int(line.split()[1])
print(total, calls)
PY
}

# Runs one proxy under callgrind and prints "instructions allocations" per request.
measure() {
	local name=$1 pid out dump
	out="$WORK/callgrind.$name.out"
	case $name in
	nginx | nginx-log) valgrind --tool=callgrind ${VG_OPTS:-} --callgrind-out-file="$out" "$NGINX" -c "$WORK/$name/nginx.conf" -p "$WORK/$name" 2>"$WORK/$name.vg" & ;;
	haproxy) valgrind --tool=callgrind ${VG_OPTS:-} --callgrind-out-file="$out" "$HAPROXY" -f "$WORK/haproxy.cfg" -db 2>"$WORK/$name.vg" & ;;
	aegis | aegis-steady | aegis-log) valgrind --tool=callgrind ${VG_OPTS:-} --callgrind-out-file="$out" "$AEGIS" run --config-dir "$WORK/$name" --threads "$AEGIS_THREADS" 2>"$WORK/$name.vg" & ;;
	esac
	pid=$!
	PIDS+=($pid)
	wait_port "$PROXY_PORT" || { tail -5 "$WORK/$name.vg" >&2; exit 1; }
	"$LOADGEN" run --target "http://127.0.0.1:$PROXY_PORT/" -n "$WARMUP" -c 1 -t 1 --no-live --fail-on-error >/dev/null
	callgrind_control -z "$pid" >/dev/null 2>&1
	"$LOADGEN" run --target "http://127.0.0.1:$PROXY_PORT/" -n "$N" -c 1 -t 1 --no-live --fail-on-error --timeout 30s >"$WORK/$name.load" 2>&1 ||
		{ cat "$WORK/$name.load" >&2; exit 1; }
	callgrind_control -d "$pid" >/dev/null 2>&1
	kill -INT "$pid" 2>/dev/null || true
	wait_gone "$pid"
	# The dump written by -d is "$out.1" (the final dump at exit is "$out").
	dump="$out.1"
	[[ -s $dump ]] || { echo "$name: no callgrind dump" >&2; exit 1; }
	read -r ir calls < <(count "$dump")
	awk -v ir="$ir" -v c="$calls" -v n="$N" 'BEGIN { printf "%.0f %.2f\n", ir / n, c / n }'
}

echo "callgrind: $N requests over one keep-alive connection after $WARMUP warm-up requests; GET / to aegis-loadgen backend"
echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), HAProxy $("$HAPROXY" -v | awk 'NR == 1 { print $3 }'), $("$AEGIS" --version | head -1), $(valgrind --version)"
declare -A IR AL
for p in $PROXIES; do
	read -r ir al < <(measure "$p")
	IR[$p]=$ir
	AL[$p]=$al
	printf '  %-12s %8s instructions/request  %6s allocations/request\n' "$p" "$ir" "$al" >&2
done
echo
printf '| %-12s | %12s | %12s | %10s | %12s |\n' proxy instr/req allocs/req "vs nginx" "vs HAProxy"
echo '|--------------|-------------:|-------------:|-----------:|-------------:|'
for p in $PROXIES; do
	rn=$(awk -v a="${IR[$p]}" -v b="${IR[nginx]:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
	rh=$(awk -v a="${IR[$p]}" -v b="${IR[haproxy]:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
	printf '| %-12s | %12s | %12s | %10s | %12s |\n' "$p" "${IR[$p]}" "${AL[$p]}" "$rn" "$rh"
done
