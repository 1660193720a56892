#!/usr/bin/env bash
# Three Aegis nodes fed one config, in the two fleet modes of docs/FLEET.md,
# with a load generator on every node counting failed requests. This is a
# test harness, not part of the product (the product relies on Kubernetes
# and Flagger for the fleet).
#
# Two engines (MODE):
#   MODE=loopback (default): the nodes are three `aegis run` processes on
#     loopback (each with its own config directory, state directory and
#     ports), and "cut off" is SIGSTOP: the controller's probes and the
#     node's traffic get no answer, as with a cut cable.
#   MODE=docker: the nodes are three containers of the locally built image
#     (demo/build-image.sh with AEGIS_IMAGE_SOURCE=local: a debootstrap base
#     and the host's target/release binaries; nothing is pulled) on a private
#     network `aegis-sim`. Each node's /etc/aegis is a bind-mounted host
#     directory laid out as a ConfigMap volume, its /var/lib/aegis another.
#     The origin and the three load generators are containers on the same
#     network; the script (kubelet, controller) reaches the nodes' admin
#     listeners at their container addresses from the host, with the admin
#     token (off loopback the JSON of /ready needs it). "Cut off" is
#     `docker network disconnect aegis-sim <node>`. Every container and the
#     network are removed on exit.
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
#   MODE=docker deploy/simulate/three-nodes.sh   (also docker, and root or
#                                            debootstrap's base image cached)
# Env: SIM_BASE_PORT (default 18000, loopback), SIM_RATE (requests/s per
# node, 40), SIM_IMAGE (docker, default aegis:sim; built when missing),
# SIM_PHASES (default all: local,holdoff,staged,cut; a comma list runs a
# subset, e.g. staged,cut).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/target/release"
for b in aegis aegis-sandbox aegis-loadgen; do
    [ -x "$bin/$b" ] || { echo "$bin/$b is not built (cargo build --release --workspace)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 1; }
MODE="${MODE:-loopback}"
phases=",${SIM_PHASES:-local,holdoff,staged,cut},"
phase() { [[ "$phases" == *",$1,"* ]]; }
case "$MODE" in
    loopback) ;;
    docker)
        command -v docker >/dev/null || { echo "MODE=docker needs docker" >&2; exit 1; }
        image="${SIM_IMAGE:-aegis:sim}"
        net=aegis-sim
        token=aegis-sim-token
        if ! docker image inspect "$image" >/dev/null 2>&1; then
            # The demo's build path: pulls nothing (debootstrap base, cached,
            # plus the release binaries above).
            AEGIS_IMAGE_SOURCE=local AEGIS_IMAGE="$image" "$root/demo/build-image.sh"
        fi
        ;;
    *) echo "MODE must be loopback or docker, not $MODE" >&2; exit 1 ;;
esac

base="${SIM_BASE_PORT:-18000}"
rate="${SIM_RATE:-40}"
origin_port=$((base + 90))
KUBELET_WINDOW=1      # seconds over which the kubelet swaps every node
BAKE=8                # the controller's minReadySeconds
HOLDOFF_WINDOW=24     # gate.holdoff.window (stands for 5m)
work="$(mktemp -d)"
pids=()
node_pid=()
auth=()
# Docker: the containers' names carry this run's id, so cleanup removes only
# what this run started.
run_id="aegis-sim-$$"

cleanup() {
    for p in "${node_pid[@]}" "${pids[@]}"; do
        kill -CONT "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    if [ "$MODE" = docker ]; then
        docker ps -aq --filter "label=$run_id" | xargs -r docker rm -f >/dev/null 2>&1 || true
        docker network rm "$net" >/dev/null 2>&1 || true
    fi
    wait 2>/dev/null || true
    # Files the containers' user (10001) wrote: removed from inside one when
    # the host user cannot.
    rm -rf "$work" 2>/dev/null || { [ "$MODE" = docker ] && docker run --rm -u 0 --entrypoint rm \
        -v "$work:/w" "$image" -rf /w/n0 /w/n1 /w/n2 /w/out >/dev/null 2>&1; rm -rf "$work"; } || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
    endpoints: ["$origin_addr"]
    response_timeout: $1
routes:
  - name: site
    match: { path_prefix: / }
    upstream: origin
EOF
}

aegis_yaml() { # node index, holdoff window
    if [ "$MODE" = docker ]; then
        # Every container has its own address: the same ports on each.
        printf 'listen: ["0.0.0.0:8080"]\nadmin: "0.0.0.0:9901"\n'
    else
        printf 'listen: ["127.0.0.1:%s"]\nadmin: "127.0.0.1:%s"\n' $((base + 80 + $1)) $((base + 10 + $1))
    fi
    cat <<EOF
access_log: "off"
workers: 0
gate:
  debounce: 50ms
  bake_seconds: 8
  holdoff: { window: ${2} }
EOF
}

node_ip=()
http_of() { if [ "$MODE" = docker ]; then echo "${node_ip[$1]}:8080"; else echo "127.0.0.1:$((base + 80 + $1))"; fi; }
admin_of() { if [ "$MODE" = docker ]; then echo "${node_ip[$1]}:9901"; else echo "127.0.0.1:$((base + 10 + $1))"; fi; }
ctr_of() { echo "$run_id-${names[$1]}"; }
ip_in_net() { docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$1"; }

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
        if [ "$MODE" = docker ]; then
            # The config directory is a bind-mounted host directory, as the
            # kubelet's ConfigMap volume is a host directory mounted into the
            # pod: the `..data` swap happens on the host, the watcher sees it.
            # aegis wants its state directory its own: the image's user
            # (10001) when the host can chown, else the host user.
            if [ "$(id -u)" = 0 ]; then
                chown 10001:10001 "$work/n$i/state"
                as=()
            else
                as=(-u "$(id -u):$(id -g)")
            fi
            docker run -d "${as[@]}" --name "$(ctr_of "$i")" --label "$run_id" --hostname "${names[$i]}" \
                --network "$net" -e AEGIS_NODE_NAME="${names[$i]}" -e RUST_LOG=warn \
                -e AEGIS_ADMIN_TOKEN="$token" -e NO_COLOR=1 \
                -v "$work/n$i/config:/etc/aegis:ro" -v "$work/n$i/state:/var/lib/aegis" \
                "$image" run --config-dir /etc/aegis --state-dir /var/lib/aegis --threads 1 >/dev/null
            node_ip[$i]=$(ip_in_net "$(ctr_of "$i")")
        else
            AEGIS_NODE_NAME="${names[$i]}" RUST_LOG=warn "$bin/aegis" run \
                --config-dir "$work/n$i/config" --state-dir "$work/n$i/state" --threads 1 \
                >"$work/n$i/out.log" 2>&1 &
            node_pid+=($!)
        fi
    done
    for i in 0 1 2; do
        wait_for 30 "node $i ready" node_ready "$i" || exit 1
    done
}

stop_nodes() {
    local p i
    for p in "${node_pid[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    node_pid=()
    if [ "$MODE" = docker ]; then
        for i in 0 1 2; do docker rm -f "$(ctr_of "$i")" >/dev/null 2>&1 || true; done
    fi
}

# The cut cable, and its repair.
cut_off() { # node
    if [ "$MODE" = docker ]; then
        docker network disconnect "$net" "$(ctr_of "$1")"
        echo "  cut off ${names[$1]} (docker network disconnect $net) right after its update"
    else
        kill -STOP "${node_pid[$1]}"
        echo "  cut off ${names[$1]} (SIGSTOP) right after its update"
    fi
}
reconnect() { # node
    if [ "$MODE" = docker ]; then
        docker network connect "$net" "$(ctr_of "$1")" 2>/dev/null || true
    else
        kill -CONT "${node_pid[$1]}"
    fi
}

ready_json() { curl -s -m 1 "${auth[@]}" "http://$(admin_of "$1")/ready${2:-}" || true; }
ready_code() { curl -s -o /dev/null -w '%{http_code}' -m 1 "${auth[@]}" "http://$(admin_of "$1")/ready${2:-}" || true; }
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
        if [ "$MODE" = docker ]; then
            # A load generator container on the network, per node (as a
            # per-node share of the clients); its report lands in $work/out.
            docker run --rm --name "$run_id-load-$i" --label "$run_id" --network "$net" \
                -u 0 -v "$work/writes.yaml:/sim/writes.yaml:ro" -v "$work/out:/sim/out" \
                --entrypoint aegis-loadgen "$image" run --target "http://$(http_of "$i")" \
                --scenario /sim/writes.yaml -R "$rate" -c 16 -t 1 -d "${1}s" --timeout 2s --no-live \
                --json "/sim/out/load-$2-$i.json" >/dev/null 2>&1 &
        else
            "$bin/aegis-loadgen" run --target "http://$(http_of "$i")" --scenario "$work/writes.yaml" \
                -R "$rate" -c 16 -t 1 -d "${1}s" --timeout 2s --no-live \
                --json "$work/out/load-$2-$i.json" >/dev/null 2>&1 &
        fi
        loads+=($!)
    done
    if [ "$MODE" = docker ]; then
        sleep 1 # the containers' start, so the change lands inside the load
    fi
}

report_load() { # phase, label, rollout seconds or "-"
    local i failed total=0 sent=0 nodes=0 per=""
    for p in "${loads[@]}"; do wait "$p" || true; done
    for i in 0 1 2; do
        failed=$(jq '.errors.total' "$work/out/load-$1-$i.json")
        sent=$((sent + $(jq '.requests' "$work/out/load-$1-$i.json")))
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

judged_accept() { ready_json "$1" | jq -e '.on_disk_verdict == "accept"' >/dev/null 2>&1; }

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
            cut_off "$i"
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
pick_names
mkdir -p "$work/out"
if [ "$MODE" = docker ]; then
    chmod 0755 "$work"
    auth=(-H "Authorization: Bearer $token")
    docker network rm "$net" >/dev/null 2>&1 || true
    docker network create "$net" --label "$run_id" >/dev/null
    # The origin: a container on the same network.
    docker run -d --name "$run_id-origin" --label "$run_id" --network "$net" \
        --entrypoint aegis-loadgen "$image" backend --listen 0.0.0.0:9000 --name origin >/dev/null
    origin_addr="$(ip_in_net "$run_id-origin"):9000"
else
    "$bin/aegis-loadgen" backend --listen "127.0.0.1:$origin_port" --name origin >/dev/null 2>&1 &
    pids+=($!)
    origin_addr="127.0.0.1:$origin_port"
fi
routes_yaml 2s >"$work/good.yaml"
routes_yaml 100ms >"$work/deadly.yaml"
routes_yaml 3s >"$work/better.yaml"
sleep 0.3
echo "nodes: ${names[*]} (hold-offs in a ${HOLDOFF_WINDOW}s window:" \
    "$(for n in "${names[@]}"; do printf '%s=%.1fs ' "$n" "$(awk -v d="$(fnv_delay_ms "$n" $((HOLDOFF_WINDOW * 1000)))" 'BEGIN { print d / 1000 }')"; done))"
echo "load: $rate POST/s per node, origin answers them in 150 ms; kubelet window ${KUBELET_WINDOW}s; bake ${BAKE}s"
if [ "$MODE" = docker ]; then
    echo "engine: docker, image $image ($(docker run --rm --entrypoint aegis "$image" --version)), network $net;" \
        "origin and load generators are containers on it"
else
    echo "engine: loopback processes"
fi
echo

if phase local; then
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
    wait_for 20 "judged" judged_accept "$i" || true
    on_disk "$i" >"$work/expect-$i"
done
wait_for 30 "every node serving the good change" all_serve_disk || true
report_load local-good "good change" "$(since "$t0")s"
stop_nodes
fi
echo

if phase holdoff; then
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
    wait_for 20 "judged" judged_accept "$i" || true
    on_disk "$i" >"$work/expect-$i"
done
wait_for $((HOLDOFF_WINDOW + 10)) "every node serving the good change" all_serve_disk || true
report_load holdoff-good "good change" "$(since "$t0")s"
stop_nodes
fi
echo

if phase staged; then
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
fi

if phase cut; then
if [ "$MODE" = docker ] && [ -z "$(docker ps -q --filter "name=$(ctr_of 0)")" ] \
    || { [ "$MODE" = loopback ] && [ "${#node_pid[@]}" -eq 0 ]; }; then
    start_nodes 0ms
fi
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
reconnect "$cut"
stop_nodes
fi
