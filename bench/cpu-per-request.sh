#!/usr/bin/env bash
# CPU time (user + system, from /proc/PID/stat) one `aegis run` process
# (`workers: 0`, access log off) spends per request over exactly $N
# requests, for each binary given, alternated for $ROUNDS rounds. CPU time per
# request is less sensitive to a busy machine than requests per second (a
# descheduled proxy does not burn CPU), so it compares two builds of the same
# code, e.g. two global allocators, on a shared machine.
#
# Usage: bench/cpu-per-request.sh BINARY...   (N=200000 CONNS=16 ROUNDS=3)
# The proxy runs on $PROXY_CPU (0), backend and aegis-loadgen on $LOAD_CPU (1).
set -euo pipefail

N=${N:-200000}
CONNS=${CONNS:-16}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-19600}
LOADGEN=$(realpath "${LOADGEN:-target/release/aegis-loadgen}")
[[ -z ${AEGIS_SANDBOX:-} ]] && export AEGIS_SANDBOX=$(realpath target/release/aegis-sandbox)
[[ $# -gt 0 ]] || { echo "usage: $0 BINARY..." >&2; exit 1; }

WORK=$(mktemp -d /tmp/aegis-cpu.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() {
	for _ in $(seq 1 200); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	echo "nothing on port $1" >&2
	return 1
}

taskset -c "$LOAD_CPU" "$LOADGEN" backend --listen "127.0.0.1:$BASE_PORT" --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$BASE_PORT"
cat >"$WORK/aegis.yaml" <<CONF
listen: ["127.0.0.1:$((BASE_PORT + 1))"]
admin: "off"
access_log: "off"
workers: 0
state_dir: "$WORK/state"
CONF
cat >"$WORK/routes.yaml" <<CONF
upstreams:
  - { name: backend, endpoints: ["127.0.0.1:$BASE_PORT"] }
routes:
  - { name: all, match: { path_prefix: "/" }, upstream: backend }
CONF

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
	for bin in "$@"; do
		rm -rf "$WORK/state"
		taskset -c "$PROXY_CPU" "$bin" run --config-dir "$WORK" 2>/dev/null &
		pid=$!
		wait_port "$((BASE_PORT + 1))"
		taskset -c "$LOAD_CPU" "$LOADGEN" run --target "http://127.0.0.1:$((BASE_PORT + 1))/" -n 2000 -c "$CONNS" -t 1 --no-live >/dev/null
		t0=$(ticks "$pid")
		s0=$(date +%s.%N)
		taskset -c "$LOAD_CPU" "$LOADGEN" run --target "http://127.0.0.1:$((BASE_PORT + 1))/" -n "$N" -c "$CONNS" -t 1 --no-live --fail-on-error >/dev/null
		t1=$(ticks "$pid")
		s1=$(date +%s.%N)
		kill "$pid"
		wait "$pid" 2>/dev/null || true
		awk -v b="$bin" -v r="$round" -v t="$((t1 - t0))" -v hz="$hz" -v n="$N" -v s="$(echo "$s1 - $s0" | bc)" \
			'BEGIN { printf "round %d  %-28s %6.2f us CPU/request  %8.0f req/s\n", r, b, t / hz / n * 1e6, n / s }'
	done
done
