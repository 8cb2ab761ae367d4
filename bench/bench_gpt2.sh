#!/bin/sh
# bench_gpt2.sh [CARVE] [STEPS]: gpt2-124m-shaped training (seq 256, batch 4)
# on this machine: one rank (all cores' threads) against two data-parallel
# ranks (one thread each), measured and as the planner predicts it on the
# cluster carve profile measures; and the transport's cost against the
# plan's own collectives measured alone.
#
# PRECISION=bf16 in the environment plans and runs bf16 (default: fp32, the
# figures in bench/README.md). Prints a table of medians over STEPS steps
# (after the first).
set -eu
carve=${1:-build/carve}
steps=${2:-4}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/../tests/mpi.sh"
model="gpt --preset gpt2-124m --set seq=256,batch=4"
cores=$(getconf _NPROCESSORS_ONLN)

# the machine, as 1 rank and as 2
OMP_NUM_THREADS=$cores "$carve" profile --quick -o "$tmp/one.cluster" >/dev/null
OMP_NUM_THREADS=1 $mpirun -np 2 "$carve" profile -o "$tmp/two.cluster" >"$tmp/profile2.out"

# 1 rank: the single-rank program; 2 ranks: dp=2 from the planner
"$carve" plan $model --cluster "$tmp/one.cluster" --manual dp=1 --precision "${PRECISION:-fp32}" -o "$tmp/p1" >/dev/null 2>&1
OMP_NUM_THREADS=$cores "$carve" run "$tmp/p1" --steps $((steps + 1)) --log-every 1 >"$tmp/run1.out"
"$carve" plan $model --cluster "$tmp/two.cluster" --manual dp=2 --precision "${PRECISION:-fp32}" -o "$tmp/p2" >/dev/null 2>&1
OMP_NUM_THREADS=1 $mpirun -np 2 "$carve" run "$tmp/p2" --steps $((steps + 1)) --log-every 1 >"$tmp/run2.out"
"$carve" plan $model --cluster "$tmp/two.cluster" --manual tp=2 --precision "${PRECISION:-fp32}" -o "$tmp/p3" >/dev/null 2>&1
OMP_NUM_THREADS=1 $mpirun -np 2 "$carve" run "$tmp/p3" --steps $((steps + 1)) --log-every 1 >"$tmp/run3.out"

median_ms() { grep '^step' "$1" | tail -n +2 | awk '{print $5}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pred_ms() { grep -o '"predicted_step_s": [0-9.e+-]*' "$1" | head -1 | awk '{printf "%.1f", $2 * 1e3}'; }
tokens=$((4 * 256))
m1=$(median_ms "$tmp/run1.out")
m2=$(median_ms "$tmp/run2.out")
m3=$(median_ms "$tmp/run3.out")
p3=$(pred_ms "$tmp/p3/plan.json")
p1=$(pred_ms "$tmp/p1/plan.json")
p2=$(pred_ms "$tmp/p2/plan.json")
echo "gpt2-124m shape, seq 256, batch 4 ($tokens tokens/step), $cores cores, median of $steps steps after the first"
printf '%-22s %10s %10s %12s %12s\n' "" "ms/step" "tok/s" "predicted" "meas/pred"
awk -v n="1 rank" -v m="$m1" -v p="$p1" -v t=$tokens 'BEGIN { printf "%-22s %10.0f %10.0f %12.0f %12.2f\n", n, m, t / m * 1e3, p, m / p }'
awk -v n="2 ranks, dp=2" -v m="$m2" -v p="$p2" -v t=$tokens 'BEGIN { printf "%-22s %10.0f %10.0f %12.0f %12.2f\n", n, m, t / m * 1e3, p, m / p }'
awk -v n="2 ranks, tp=2" -v m="$m3" -v p="$p3" -v t=$tokens 'BEGIN { printf "%-22s %10.0f %10.0f %12.0f %12.2f\n", n, m, t / m * 1e3, p, m / p }'
awk -v a="$m1" -v b="$m2" -v c="$m3" 'BEGIN { printf "tokens/s against 1 rank: dp=2 %.2f, tp=2 %.2f\n", a / b, a / c }'

# the transport against the collectives alone: the step's communication
# (time inside all-reduce instructions, busiest rank) against the gradient
# bytes over the all-reduce bus bandwidth carve profile measured
comm=$(sed -n 's/^communication: \([0-9.]*\) ms.*/\1/p' "$tmp/run2.out")
bw=$(sed -n 's/^intra_bandwidth *\([0-9.e+]*\).*/\1/p' "$tmp/two.cluster")
params=$("$carve" check $model | sed -n 's/.*parameters *\([0-9]*\) .*/\1/p')
awk -v c="$comm" -v bw="$bw" -v n="$params" 'BEGIN {
  alone = 4 * n / bw * 1e3   # 2(p-1)/p = 1 for two ranks
  printf "gradient all-reduce: %.0f ms/step in the run, %.0f ms for %d floats at the profiled %.2f GB/s: ratio %.2f\n",
    c, alone, n, bw / 1e9, c / alone }'
