#!/usr/bin/env bash
# Three Aegis nodes fed one config, in the two fleet modes of docs/FLEET.md,
# with a load generator on every node counting failed requests. This is a
# test harness, not part of the product (the product relies on Kubernetes
# and Flagger for the fleet).
#
# SUBSTITUTION: issue 19 asks for three Docker containers on a private
# network, with `docker network disconnect` for the cut-off node. Docker can
# pull no image on the machine this was written on, so the nodes are three
# `aegis run` processes on loopback (each with its own config directory,
# state directory and ports), and "cut off" is SIGSTOP: the controller's
# probes and the node's traffic get no answer, as with a cut cable.
#
# What plays what:
#   - kubelet (local-gate mode): every node's config directory is a
#     ConfigMap volume (`..data` -> `..<version>`, each file a symlink into
#     `..data`). A change is an atomic `..data` swap on every node within
#     KUBELET_WINDOW seconds (60-90 s on Kubernetes; scaled down here).
#   - DaemonSet controller (staged mode): one node at a time; the node must
#     become ready on /ready?require=accepted with the new content, then stay
#     ready for BAKE seconds (minReadySeconds); a node not ready stalls the
#     rollout. The node's directory is swapped in place with its state kept
#     (as a hostPath state directory would; a new pod on an emptyDir has no
#     earlier version and relies on Flagger's analysis instead).
#   - the operator's alert (local-gate + hold-off): as soon as one node
#     rolls the change back, the halt key is added to the ConfigMap (every
#     node's directory, within the kubelet window).
#
# The deadly change: the upstream's response_timeout goes from 2s to 100ms.
# The clients' traffic is writes (`POST /api/orders` with a body) that the
# origin answers in 150 ms (`?delay_ms=150`). The gate's replay runs against
# stub upstreams that answer at once, and its check against the real
# upstreams sends only reads (GET/HEAD: a gate must not write to an origin),
# so every gate accepts it, and live traffic gets 504 on every request. Each
# node's own bake (gate.bake_seconds) sees the 5xx share rise and rolls it
# back: the question is how many nodes, and how much traffic, fail first.
# The good change: response_timeout 3s.
#
#   deploy/simulate/three-nodes.sh          (needs target/release/aegis,
#                                            aegis-sandbox, aegis-loadgen)
# Env: SIM_BASE_PORT (default 18000), SIM_RATE (requests/s per node, 40).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/target/release"
for b in aegis aegis-sandbox aegis-loadgen; do
    [ -x "$bin/$b" ] || { echo "$bin/$b is not built (cargo build --release --workspace)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 1; }

base="${SIM_BASE_PORT:-18000}"
rate="${SIM_RATE:-40}"
origin_port=$((base + 90))
KUBELET_WINDOW=1      # seconds over which the kubelet swaps every node
BAKE=8                # the controller's minReadySeconds
HOLDOFF_WINDOW=24     # gate.holdoff.window (stands for 5m)
work="$(mktemp -d)"
pids=()
node_pid=()

cleanup() {
    for p in "${node_pid[@]}" "${pids[@]}"; do
        kill -CONT "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# FNV-1a 64 of a name mod a window in ms: the hold-off gate::fleet computes.
fnv_delay_ms() {
    python3 -c 'import sys
h = 0xcbf29ce484222325
for b in sys.argv[1].encode():
    h ^= b; h = (h * 0x100000001b3) % (1 << 64)
print(h % int(sys.argv[2]))' "$1" "$2"
}

# Node names whose hold-offs fall in the first, second and last third of
# the window (a real fleet gets what its names give; three names picked at
# random can land close together).
pick_names() {
    local w=$((HOLDOFF_WINDOW * 1000)) third i d
    names=()
    for third in 0 1 2; do
        for i in $(seq 1 200); do
            d=$(fnv_delay_ms "node-$i" "$w")
            if [ $((d * 3 / w)) -eq "$third" ]; then
                names+=("node-$i")
                break
            fi
        done
    done
}

routes_yaml() { # response_timeout
    cat <<EOF
upstreams:
  - name: origin
    endpoints: ["127.0.0.1:$origin_port"]
    response_timeout: $1
routes:
  - name: site
    match: { path_prefix: / }
    upstream: origin
EOF
}

aegis_yaml() { # node index, holdoff window
    cat <<EOF
listen: ["127.0.0.1:$((base + 80 + $1))"]
admin: "127.0.0.1:$((base + 10 + $1))"
access_log: "off"
workers: 0
gate:
  debounce: 50ms
  bake_seconds: 8
  holdoff: { window: ${2} }
EOF
}

http_of() { echo "127.0.0.1:$((base + 80 + $1))"; }
admin_of() { echo "127.0.0.1:$((base + 10 + $1))"; }

# kubelet: publish version $2 of node $1's volume (a new ..<ts> directory,
# then the atomic ..data swap).
publish() { # node, routes text file, [halt]
    local d="$work/n$1/config" v="..$(date +%s%N)"
    mkdir -p "$d/$v"
    cp "$work/n$1/aegis.yaml" "$d/$v/aegis.yaml"
    cp "$2" "$d/$v/routes.yaml"
    ln -s "$v" "$d/..data_tmp"
    mv -T "$d/..data_tmp" "$d/..data"
    for f in aegis.yaml routes.yaml; do
        [ -L "$d/$f" ] || ln -s "..data/$f" "$d/$f"
    done
}

halt_on() { # node: the key appears (kubelet: a file in ..data, a symlink to it)
    local d="$work/n$1/config"
    echo "halted by the simulation's alert" >"$d/..data/aegis-halt"
    ln -sfn ..data/aegis-halt "$d/aegis-halt"
}

start_nodes() { # holdoff window
    local i
    node_pid=()
    for i in 0 1 2; do
        rm -rf "$work/n$i"
        mkdir -p "$work/n$i/config" "$work/n$i/state"
        aegis_yaml "$i" "$1" >"$work/n$i/aegis.yaml"
        publish "$i" "$work/good.yaml"
        AEGIS_NODE_NAME="${names[$i]}" RUST_LOG=warn "$bin/aegis" run \
            --config-dir "$work/n$i/config" --state-dir "$work/n$i/state" --threads 1 \
            >"$work/n$i/out.log" 2>&1 &
        node_pid+=($!)
    done
    for i in 0 1 2; do
        wait_for 30 "node $i ready" node_ready "$i" || exit 1
    done
}

stop_nodes() {
    local p
    for p in "${node_pid[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    node_pid=()
}

ready_json() { curl -s -m 1 "http://$(admin_of "$1")/ready${2:-}" || true; }
ready_code() { curl -s -o /dev/null -w '%{http_code}' -m 1 "http://$(admin_of "$1")/ready${2:-}" || true; }
node_ready() { [ "$(ready_code "$1")" = 200 ]; }
serving() { ready_json "$1" | jq -r '.serving // empty' 2>/dev/null || true; }
on_disk() { ready_json "$1" | jq -r '.on_disk // empty' 2>/dev/null || true; }
state_of() { local s; s=$(ready_json "$1" | jq -r '.state // empty' 2>/dev/null || true); echo "${s:-unreachable}"; }

wait_for() { # seconds, what, command...
    local limit=$1 what=$2 t0
    shift 2
    t0=$(now)
    while ! "$@"; do
        if awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            echo "  timed out after ${limit}s: $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

# Load on every node for $1 seconds; reports in $work/load-$2-<node>.json.
load() { # seconds, phase
    local i
    loads=()
    for i in 0 1 2; do
        "$bin/aegis-loadgen" run --target "http://$(http_of "$i")" --scenario "$work/writes.yaml" \
            -R "$rate" -c 16 -t 1 -d "${1}s" --timeout 2s --no-live \
            --json "$work/load-$2-$i.json" >/dev/null 2>&1 &
        loads+=($!)
    done
}

report_load() { # phase, label, rollout seconds or "-"
    local i failed total=0 sent=0 nodes=0 per=""
    for p in "${loads[@]}"; do wait "$p" || true; done
    for i in 0 1 2; do
        failed=$(jq '.errors.total' "$work/load-$1-$i.json")
        sent=$((sent + $(jq '.requests' "$work/load-$1-$i.json")))
        total=$((total + failed))
        [ "$failed" -gt 0 ] && nodes=$((nodes + 1))
        per="$per ${names[$i]}=$failed"
    done
    printf '%-34s failed %5d of %5d  nodes affected %d/3  (%s )  rollout %s\n' \
        "$2" "$total" "$sent" "$nodes" "$per" "$3"
}

# What each node ended on: its readiness state and the verdict kept for
# the content on disk (`accept` while held: the hold is not a verdict).
ends() {
    local i out=""
    for i in 0 1 2; do
        out="$out ${names[$i]}:$(ready_json "$i" | jq -r '"\(.state) (\(.on_disk_verdict // "-"))"')"
    done
    echo "  after:$out"
}

all_serve_disk() {
    local i
    for i in 0 1 2; do
        [ "$(state_of "$i")" = serving ] || return 1
        [ "$(on_disk "$i")" = "$(cat "$work/expect-$i")" ] || return 1
    done
}

kubelet_swap_all() { # routes file
    local i
    for i in 0 1 2; do
        publish "$i" "$1"
        sleep "$(awk -v w=$KUBELET_WINDOW 'BEGIN { printf "%.2f", w / 3 }')"
    done
}

# The DaemonSet controller: node by node; 0 when every node took it.
controller() { # routes file, [node to cut off]
    local i before t
    for i in 0 1 2; do
        before=$(on_disk "$i")
        publish "$i" "$1"
        if [ "${2:-}" = "$i" ]; then
            kill -STOP "${node_pid[$i]}"
            echo "  cut off ${names[$i]} (SIGSTOP) right after its update"
        fi
        node_took() { local d; d=$(on_disk "$i"); [ -n "$d" ] && [ "$d" != "$before" ] \
            && [ "$(ready_code "$i" '?require=accepted')" = 200 ] && [ "$(state_of "$i")" = serving ]; }
        if ! wait_for 20 "${names[$i]} ready with the new content" node_took; then
            echo "  rollout stalled at ${names[$i]} ($(state_of "$i")): not ready; $((2 - i)) node(s) not touched"
            return 1
        fi
        t=0
        while [ "$t" -lt $((BAKE * 5)) ]; do
            if [ "$(ready_code "$i" '?require=accepted')" != 200 ]; then
                echo "  rollout stalled at ${names[$i]}: not ready during the bake ($(state_of "$i")); $((2 - i)) node(s) not touched"
                return 1
            fi
            sleep 0.2
            t=$((t + 1))
        done
    done
}

cat >"$work/writes.yaml" <<'EOF'
expect: [200]
requests:
  - method: POST
    path: /api/orders?delay_ms=150
    headers: { content-type: application/json }
    body_size: 256
EOF
routes_yaml 2s >"$work/good.yaml"
routes_yaml 100ms >"$work/deadly.yaml"
routes_yaml 3s >"$work/better.yaml"
pick_names
"$bin/aegis-loadgen" backend --listen "127.0.0.1:$origin_port" --name origin >/dev/null 2>&1 &
pids+=($!)
sleep 0.3
echo "nodes: ${names[*]} (hold-offs in a ${HOLDOFF_WINDOW}s window:" \
    "$(for n in "${names[@]}"; do printf '%s=%.1fs ' "$n" "$(awk -v d="$(fnv_delay_ms "$n" $((HOLDOFF_WINDOW * 1000)))" 'BEGIN { print d / 1000 }')"; done))"
echo "load: $rate POST/s per node, origin answers them in 150 ms; kubelet window ${KUBELET_WINDOW}s; bake ${BAKE}s"
echo

echo "== local gate, no hold-off (what local-gate mode did before gate.holdoff)"
start_nodes 0ms
load 16 local-deadly
sleep 2
kubelet_swap_all "$work/deadly.yaml"
report_load local-deadly "deadly change" "-"
ends
load 12 local-good
sleep 1
t0=$(now)
kubelet_swap_all "$work/better.yaml"
for i in 0 1 2; do
    # The content each node must end serving: what the last publish put there.
    wait_for 20 "judged" bash -c "curl -s -m1 http://$(admin_of "$i")/ready | jq -e '.on_disk_verdict == \"accept\"' >/dev/null" || true
    on_disk "$i" >"$work/expect-$i"
done
wait_for 30 "every node serving the good change" all_serve_disk || true
report_load local-good "good change" "$(since "$t0")s"
stop_nodes
echo

echo "== local gate, hold-off ${HOLDOFF_WINDOW}s + halt key on the first rollback"
start_nodes "${HOLDOFF_WINDOW}s"
load 40 holdoff-deadly
sleep 2
kubelet_swap_all "$work/deadly.yaml"
t0=$(now)
first_rollback() {
    local i
    for i in 0 1 2; do
        ready_json "$i" | jq -e '.on_disk_verdict | startswith("rolled_back")' >/dev/null 2>&1 && return 0
    done
    return 1
}
if wait_for $((HOLDOFF_WINDOW + 15)) "a node rolls back" first_rollback; then
    echo "  a node rolled back after $(since "$t0")s: halt key added on every node"
    for i in 0 1 2; do halt_on "$i"; done
fi
report_load holdoff-deadly "deadly change" "-"
ends
echo "  revert: the ConfigMap goes back to the good content and the halt key is removed"
for i in 0 1 2; do publish "$i" "$work/good.yaml"; rm -f "$work/n$i/config/aegis-halt"; done
sleep 2
load $((HOLDOFF_WINDOW + 12)) holdoff-good
sleep 1
t0=$(now)
kubelet_swap_all "$work/better.yaml"
sleep 1
for i in 0 1 2; do
    wait_for 20 "judged" bash -c "curl -s -m1 http://$(admin_of "$i")/ready | jq -e '.on_disk_verdict == \"accept\"' >/dev/null" || true
    on_disk "$i" >"$work/expect-$i"
done
wait_for $((HOLDOFF_WINDOW + 10)) "every node serving the good change" all_serve_disk || true
report_load holdoff-good "good change" "$(since "$t0")s"
stop_nodes
echo

echo "== staged: node by node, /ready?require=accepted, bake ${BAKE}s"
start_nodes 0ms
load 30 staged-deadly
sleep 2
controller "$work/deadly.yaml" || true
report_load staged-deadly "deadly change" "-"
ends
for i in 0 1 2; do publish "$i" "$work/good.yaml"; done
sleep 2
load $((3 * (BAKE + 4) + 4)) staged-good
sleep 1
t0=$(now)
if controller "$work/better.yaml"; then rolled="$(since "$t0")s"; else rolled="stalled"; fi
report_load staged-good "good change" "$rolled"
echo

echo "== staged, a node cut off mid-rollout"
for i in 0 1 2; do publish "$i" "$work/good.yaml"; done
sleep 2
all_ready() { local i; for i in 0 1 2; do [ "$(state_of "$i")" = serving ] || return 1; done; }
wait_for 20 "back on the good content" all_ready
before2=$(on_disk 2)
t0=$(now)
cut=1
if controller "$work/better.yaml" "$cut"; then
    echo "  NOT STALLED: the rollout went on past the cut-off node"
else
    echo "  stalled after $(since "$t0")s; ${names[2]} still on its previous content: $([ "$(on_disk 2)" = "$before2" ] && echo yes || echo no)"
fi
kill -CONT "${node_pid[$cut]}"
stop_nodes
