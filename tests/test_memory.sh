#!/bin/sh
# test_memory.sh CARVE CLUSTERS: the memory a plan promises is the memory its
# programs use.
#
# For automatic plans of 2 and 4 ranks and hand-written ones (tensor and
# pipeline parallelism, ZeRO 3), in fp32 and bf16: `carve plan -o` writes the
# programs, they run 2 steps under mpirun, and the measured peak per rank
# (arena, backend scratch, collective staging) must not exceed the plan's
# memory per device. Then clusters sized around the model's need: with the
# devices' memory at the plan's own figure the plan still fits; at 85% of it
# and at 70% carve either finds a plan whose programs fit (its promise at
# most the capacity, and the run's peak at most the promise) or says that
# none does. Prints "N passed, M failed".
set -u
carve=$1
clusters=$2
. "$(dirname "$0")/tally.sh"
. "$(dirname "$0")/mpi.sh"
model="gpt --preset gpt-tiny --set batch=16,layers=2"

# plan NAME RANKS CLUSTER PLAN-OPTIONS...: carve plan -o $tmp/NAME (its output in $tmp/plan.out)
plan() {
  name=$1
  n=$2
  cluster=$3
  shift 3
  $carve plan $model --cluster "$cluster" --devices-per-node "$n" --quiet -o "$tmp/$name" "$@" >"$tmp/plan.out" 2>&1
}
# measure NAME RANKS: runs plan NAME, its peak at most its promise at most the capacity
measure() {
  timeout 120 $mpirun -np "$2" "$carve" run "$tmp/$1" --steps 2 >"$tmp/run.out" 2>&1
  line=$(grep "measured peak" "$tmp/run.out")
  peak=$(printf '%s' "$line" | sed -n 's/.*(\([0-9]*\) bytes).*/\1/p')
  promised=$(awk -F'[:,]' '/"memory_per_device_bytes"/ {print $2; exit}' "$tmp/$1/plan.json")
  capacity=$(awk -F'[:,]' '/"device_memory_bytes"/ {print $2; exit}' "$tmp/$1/plan.json")
  if [ -n "$peak" ] && awk -v m="$peak" -v p="$promised" -v c="$capacity" 'BEGIN { exit !(m <= p + 0 && p <= c + 0) }'; then
    ok
  else
    bad "$1: $line (promised $promised of $capacity)"
    tail -3 "$tmp/run.out" | sed 's/^/  | /'
  fi
}
# check NAME RANKS CLUSTER PLAN-OPTIONS...: plan, run, compare
check() {
  if plan "$@"; then
    measure "$1" "$2"
  else
    bad "$1: no plan"
    sed 's/^/  | /' "$tmp/plan.out" | tail -3
  fi
}

for precision in fp32 bf16; do
  check auto2.$precision 2 local --precision $precision
  check auto4.$precision 4 local --precision $precision
  check tp2dp2.$precision 4 local --precision $precision --manual dp=2,tp=2,pp=1
  check pp2tp2.$precision 4 local --precision $precision --manual dp=1,tp=2,pp=2,mb=2
  check zero3.$precision 4 local --precision $precision --manual dp=4,tp=1,pp=1,zero=3
done

# tight clusters: the local cluster with each device's memory at the plan's own figure, 85% and 70% of it
need=$(awk -F'[:,]' '/"memory_per_device_bytes"/ {print $2; exit}' "$tmp/auto2.fp32/plan.json")
for share in 1.0 0.85 0.7; do
  sed "s/^memory .*/memory $(awk -v n="$need" -v s="$share" 'BEGIN { printf "%.0f", n * s }')/" \
    "$clusters/local.cluster" >"$tmp/tight$share.cluster"
  if [ "$share" = 1.0 ]; then
    check tight$share 2 "$tmp/tight$share.cluster" --precision fp32
  elif plan tight$share 2 "$tmp/tight$share.cluster" --precision fp32; then
    measure tight$share 2
  elif grep -q "fits\|need" "$tmp/plan.out" && ! grep -qi "internal error" "$tmp/plan.out"; then
    ok # no plan fits, and carve says so
  else
    bad "tight$share: $(tail -1 "$tmp/plan.out")"
  fi
done
tally
