#!/bin/sh
# bench_overlap.sh [CARVE] [RUNS]: communication beside the compute against
# communication in turn, on 2 MPI ranks of this machine.
#
# For each layout below, a gpt whose gradient all-reduce is a visible share
# of the step (hidden 512, 4 layers, batch 2 of 64 tokens: 12.6M parameters,
# 50 MB of f32 gradients against little compute) is compiled once and run
# RUNS times (default 7) with --overlap on and --overlap off, alternately,
# 20 steps each. Prints per layout the median step time of each (ms, after
# the first step), the ratio on / off, and the median communication time
# and the part the step's thread waited for. dp=2 is the case overlap is for
# (gradient buckets beside the backward pass); tp=2 checks that the
# latency-bound tensor-parallel all-reduces lose nothing to the thread.
# LAYOUTS="dp=2" in the environment runs only those.
set -eu
carve=${1:-build/carve}
runs=${2:-7}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/../tests/mpi.sh"
sets="batch=2,seq=64,vocab=256,hidden=512,heads=8,layers=4"
median() { sort -n | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "gpt ($sets), bf16, 2 ranks on this machine ($(getconf _NPROCESSORS_ONLN) cores), $runs runs of 20 steps each way"
printf '%-10s %10s %10s %7s %14s %14s\n' layout "on ms" "off ms" "on/off" "comm ms (on)" "waited ms (on)"
for layout in ${LAYOUTS:-dp=2 tp=2}; do
  "$carve" compile gpt --preset gpt-small --set "$sets" --layout "$layout" -o "$tmp/p" >/dev/null
  : >"$tmp/on" && : >"$tmp/off" && : >"$tmp/comm" && : >"$tmp/wait"
  i=0
  while [ $i -lt "$runs" ]; do
    for ov in on off; do
      $mpirun -np 2 "$carve" run "$tmp/p" --steps 20 --log-every 100 --overlap $ov >"$tmp/out" 2>&1
      sed -n 's/.*, \([0-9.]*\) ms\/step.*/\1/p' "$tmp/out" >>"$tmp/$ov"
      if [ $ov = on ]; then
        sed -n 's/^communication: \([0-9.]*\) ms\/step.*/\1/p' "$tmp/out" >>"$tmp/comm"
        sed -n 's/.*but for \([0-9.]*\) ms\/step.*/\1/p' "$tmp/out" >>"$tmp/wait"
      fi
    done
    i=$((i + 1))
  done
  on=$(median <"$tmp/on") off=$(median <"$tmp/off") comm=$(median <"$tmp/comm") wait=$(median <"$tmp/wait")
  awk -v l="$layout" -v a="$on" -v b="$off" -v c="$comm" -v w="$wait" \
    'BEGIN { printf "%-10s %10.1f %10.1f %7.3f %14.1f %14.1f\n", l, a, b, a / b, c, w }'
done
