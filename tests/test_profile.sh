#!/bin/sh
# test_profile.sh CARVE: `carve profile` measures this machine and writes a
# cluster file that carve cluster and carve plan accept, with one rank and
# (when mpirun is there) with two; a bad option and an unwritable output are
# refused with a message. Prints "N passed, M failed".
set -u
carve=$1
. "$(dirname "$0")/tally.sh"
# shown after a failed command: what it printed
said() { sed 's/^/  | /' "$tmp/out" | head -20; }
# expect STATUS PATTERN ARGS...: exit status and a pattern in stdout+stderr
expect() {
  want=$1
  pattern=$2
  shift 2
  "$carve" "$@" >"$tmp/out" 2>&1
  got=$?
  if [ "$got" -eq "$want" ] && grep -q -- "$pattern" "$tmp/out"; then ok; else bad "carve $*: status $got (want $want)" && said; fi
}
# value KEY FILE: the value of a key in a cluster file
value() { sed -n "s/^$1  *\([^ #]*\).*/\1/p" "$2"; }

# (a) one rank: a valid cluster file the planner takes
expect 0 "products, all ranks at once" profile --quick -o "$tmp/one.cluster"
grep -q "^flops_bf16 [1-9]" "$tmp/one.cluster" && ok || bad "one rank: no measured bf16 rate"
pb=$(value pass_bandwidth "$tmp/one.cluster" 2>/dev/null)
if [ -n "$pb" ] && awk -v b="$pb" 'BEGIN {exit !(b + 0 >= 1e6)}'; then ok; else bad "one rank: pass_bandwidth '$pb'"; fi
expect 0 "1 devices = 1 node x 1 per node" cluster "$tmp/one.cluster"
expect 0 "predicted step" plan mlp --cluster "$tmp/one.cluster"
grep -q "intra_latency.*# .*local.cluster" "$tmp/one.cluster" && ok || bad "one rank: no comment on the links' figures"
expect 0 "usage: carve profile" profile --help

# (b) two ranks under MPI: the links are measured
if command -v mpirun >/dev/null 2>&1; then
  . "$(dirname "$0")/mpi.sh"
  $mpirun -np 2 "$carve" profile --quick -o "$tmp/two.cluster" >"$tmp/out" 2>&1
  got=$?
  if [ "$got" -eq 0 ] && grep -q "all-reduce over 2 ranks" "$tmp/out"; then ok; else bad "mpirun -np 2 carve profile: status $got" && said; fi
  [ "$(grep -c '^carve profile:' "$tmp/out")" -eq 1 ] && ok || bad "two ranks: not exactly one report"
  [ "$(value devices_per_node "$tmp/two.cluster" 2>/dev/null)" = 2 ] && ok || bad "two ranks: devices_per_node is not 2"
  bw=$(value intra_bandwidth "$tmp/two.cluster" 2>/dev/null)
  if [ -n "$bw" ] && awk -v b="$bw" 'BEGIN {exit !(b + 0 > 0)}'; then ok; else bad "two ranks: intra_bandwidth '$bw'"; fi
  # what an all-reduce beside the products costs them: measured, within 0 and 1
  oc=$(value overlap_cost "$tmp/two.cluster" 2>/dev/null)
  if [ -n "$oc" ] && awk -v c="$oc" 'BEGIN {exit !(c >= 0 && c <= 1)}'; then ok; else bad "two ranks: overlap_cost '$oc'"; fi
  expect 0 "2 devices = 1 node x 2 per node" cluster "$tmp/two.cluster"
else
  echo "skipped: no mpirun, so no two-rank profile"
fi

# (c) errors: a usage error (2) and an output that cannot be written (1)
expect 2 "unknown option '--fast'" profile --fast
expect 2 "needs a file" profile -o
expect 1 "cannot write" profile --quick -o "$tmp/no/such/dir/x.cluster"
[ ! -e "$tmp/no" ] && ok || bad "an unwritable output left something behind"

tally
