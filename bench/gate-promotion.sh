#!/usr/bin/env bash
# The gate's cost per candidate: snapshot → sandbox (compile candidate and
# baseline, replay) → verdict, at 10 / 1000 / 10000 routes with a
# 10000-request traffic sample, measured through `aegis check --json`, which
# runs exactly the gate's sandbox and verdict code (the in-process promotion
# that follows, an ArcSwap store, is microseconds). Target: < 1 s at 1000
# routes / 10000 samples.
#
#   bash bench/gate-promotion.sh            # release build into target/
# Prints one line per size: elapsed, compile times, replay rate, peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --release -p aegis-proxy -p aegis-sandbox
AEGIS="$CARGO_TARGET_DIR/release/aegis"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'PY'
import json, os, random, sys
work = sys.argv[1]
random.seed(1)
for n in (10, 1000, 10000):
    for side in ("baseline", "candidate"):
        d = os.path.join(work, f"r{n}-{side}")
        os.makedirs(d)
        with open(os.path.join(d, "aegis.yaml"), "w") as f:
            f.write("gate:\n  sandbox: { memory: 2GiB, deadline: 60s }\n")
        with open(os.path.join(d, "routes.yaml"), "w") as f:
            f.write("upstreams:\n  - name: app\n    endpoints: [\"127.0.0.1:9\"]\nroutes:\n")
            for i in range(n):
                # The candidate changes one route's answer: a realistic edit.
                body = "v2" if (side == "candidate" and i == 0) else "v1"
                if i % 10 == 0:
                    f.write(f"  - name: r{i}\n    match: {{ path_regex: \"^/re/{i}/[a-z]+$\" }}\n    respond: {{ status: 200, body: \"{body}\" }}\n")
                else:
                    f.write(f"  - name: r{i}\n    match: {{ path_prefix: \"/p/{i}/\" }}\n    upstream: app\n")
    with open(os.path.join(work, f"sample-{n}.jsonl"), "w") as f:
        for k in range(10000):
            i = random.randrange(n)
            path = f"/re/{i - i % 10}/abc" if random.random() < 0.1 else f"/p/{i}/item"
            route = f"r{i - i % 10}" if path.startswith("/re/") else f"r{i}"
            f.write(json.dumps({"method": "GET", "host": "example.com", "path": path,
                "headers": [["user-agent", "Mozilla/5.0"], ["accept", "*/*"]],
                "status": 200, "route": route}) + "\n")
PY

printf '%-7s %-8s %-9s %-12s %-12s %-12s %-10s %s\n' routes verdict elapsed_s cand_comp_ms base_comp_ms replay_req_s p99_us peak_rss_mib
for n in 10 1000 10000; do
  out=$("$AEGIS" check --config-dir "$work/r$n-candidate" --baseline "$work/r$n-baseline" \
        --sample "$work/sample-$n.jsonl" --no-probe --json || true)
  python3 -c '
import json, sys
d = json.loads(sys.stdin.read()); r = d["report"] or {}; rp = r.get("replay") or {}
print("%-7s %-8s %-9.3f %-12.1f %-12.1f %-12.0f %-10.1f %d" % (sys.argv[1], d["verdict"]["reason"] or "accept", d["elapsed_s"],
  r["compile_ms"]["candidate"], r["compile_ms"].get("baseline") or 0, rp.get("replay_rate", 0),
  rp.get("latency_us", {}).get("p99", 0), r.get("peak_rss_bytes", 0) >> 20))' "$n" <<<"$out"
done
