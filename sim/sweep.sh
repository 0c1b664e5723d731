#!/usr/bin/env bash
# Seed sweep: every scenario on many seeds, reporting each failure with the command that
# replays it, and the wall time per scenario.
#
#   sim/sweep.sh [SEEDS] [NODES]          e.g. sim/sweep.sh 200 12
#
# Environment: SCENARIOS (space-separated, default all), JOBS (parallel runs, default 2),
# EXTRA (more CLI flags, e.g. "--raw-loss"), SIM (the binary; default: built here, release).
# Exit status: 0 if every run passed, 1 otherwise.
set -euo pipefail

seeds=${1:-200}
nodes=${2:-12}
jobs=${JOBS:-2}
scenarios=${SCENARIOS:-"steady lossy partition-heal oneway overload crash-restart churn gc big"}
extra=${EXTRA:-}

root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${SIM:-}" ]]; then
    (cd "$root" && cargo build --release -q -p sim)
    SIM="${CARGO_TARGET_DIR:-$root/target}/release/sim"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

failed=0
for sc in $scenarios; do
    start=$(date +%s.%N)
    # One line per run: "<seed> <exit status> <result line>".
    seq 1 "$seeds" | xargs -P "$jobs" -I{} sh -c \
        '"$0" --scenario "$1" --nodes "$2" --seed {} $3 >"$4/{}.log" 2>/dev/null; echo "{} $? $(tail -n 1 "$4/{}.log")"' \
        "$SIM" "$sc" "$nodes" "$extra" "$out" >"$out/summary"
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    bad=$(awk '$2 != 0' "$out/summary" | sort -n)
    n_bad=$(printf '%s' "$bad" | grep -c . || true)
    worst=$(awk '{for (i=3;i<=NF;i++) if ($i ~ /^p99_ms=/) {split($i,a,"="); if (a[2]>m) m=a[2]}} END {print m+0}' "$out/summary")
    printf 'sweep: scenario=%s nodes=%s seeds=%s failures=%s worst_p99_ms=%s wall_s=%.1f\n' \
        "$sc" "$nodes" "$seeds" "$n_bad" "$worst" "$wall"
    if [[ -n "$bad" ]]; then
        failed=1
        while read -r seed _; do
            echo "FAIL: $SIM --scenario $sc --nodes $nodes --seed $seed $extra"
            grep -m1 VIOLATION "$out/$seed.log" || tail -n 1 "$out/$seed.log"
        done <<<"$bad"
    fi
    rm -f "$out"/*.log
done
exit $failed
