#!/usr/bin/env bash
# The gate's catch rate and verdict time over the corpus (issue 14, item 8):
# every configs/examples/{dangerous,good}/* case with a `# base: NAME` line
# is judged by `aegis check` (the real sandbox runner, the same verdict
# code as `aegis run`) against that base layered over the shipped set, with
# the base's sample, exactly as sandbox-runner/tests/corpus.rs layers it.
# Prints one line per case (verdict, expected, wall time) and the totals:
# dangerous caught, good promoted, verdicts as expected, median and max
# verdict time.
#
#   cargo build --release -p aegis-proxy -p aegis-sandbox
#   bench/gate-corpus.sh            # ROUNDS=3 bench/gate-corpus.sh: median of 3 per case
#
# Verdict time is the wall time of `aegis check` (start, static stage,
# sandbox runner start, compile of both configs, replay of the sample,
# verdict), without the TCP probes (--no-probe: the corpus' endpoints are
# the discard port). It is what the gate spends per candidate before
# promotion; the canary and bake windows come after.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
aegis="${AEGIS:-$root/target/release/aegis}"
rounds="${ROUNDS:-1}"
[ -x "$aegis" ] || { echo "build first: cargo build --release -p aegis-proxy -p aegis-sandbox" >&2; exit 2; }
[ -x "$(dirname "$aegis")/aegis-sandbox" ] || { echo "aegis-sandbox missing next to $aegis" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

header() { # DIR KEY
  { grep -h "^# $2: " "$1"/*.yaml 2>/dev/null || true; } | head -1 | sed "s/^# $2: //; s/[[:space:]]*$//"
}

layer() { # INTO FROM
  find "$2" -maxdepth 1 -type f -exec cp {} "$1"/ \;
}

caught=0 dangerous=0 promoted=0 good=0 right=0 cases=0
times=()
for kind in dangerous good; do
  for case in "$root"/configs/examples/$kind/*/; do
    case="${case%/}"
    base="$(header "$case" base)"
    [ -n "$base" ] || continue
    want="$(header "$case" gate)"
    [ "$want" = promote ] && want=accept
    baseline="$work/baseline" candidate="$work/candidate"
    rm -rf "$baseline" "$candidate" && mkdir -p "$baseline" "$candidate"
    layer "$baseline" "$root/configs"
    layer "$baseline" "$root/configs/examples/bases/$base"
    layer "$candidate" "$baseline"
    layer "$candidate" "$case"
    best=()
    for _ in $(seq "$rounds"); do
      t0=$(date +%s%N)
      out="$("$aegis" check --config-dir "$candidate" --baseline "$baseline" \
        --sample "$root/configs/examples/bases/$base/sample.jsonl" --no-probe --json 2>/dev/null || true)"
      t1=$(date +%s%N)
      best+=($(( (t1 - t0) / 1000000 )))
    done
    ms="$(printf '%s\n' "${best[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
    code="$(printf '%s' "$out" | python3 -c 'import json,sys
try:
    v = json.load(sys.stdin)["verdict"]
    print("accept" if v.get("accepted") else (v.get("reason") or "?"))
except Exception:
    print("no-verdict")')"
    cases=$((cases + 1))
    times+=("$ms")
    if [ "$kind" = dangerous ]; then
      dangerous=$((dangerous + 1))
      case "$code" in accept|held:*|no-verdict) ;; *) caught=$((caught + 1)) ;; esac
    else
      good=$((good + 1))
      [ "$code" = accept ] && promoted=$((promoted + 1))
    fi
    mark=ok
    if [ "$code" = "$want" ]; then right=$((right + 1)); else mark="EXPECTED $want"; fi
    printf '%-45s %-28s %6d ms  %s\n' "$kind/$(basename "$case")" "$code" "$ms" "$mark"
  done
done
sorted="$(printf '%s\n' "${times[@]}" | sort -n)"
median="$(printf '%s\n' "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
max="$(printf '%s\n' "$sorted" | tail -1)"
echo "corpus: $caught of $dangerous dangerous caught, $promoted of $good good promoted, $right of $cases as expected; verdict time median ${median} ms, max ${max} ms"
[ "$right" = "$cases" ]
