#!/bin/sh
# test_sp.sh CARVE: sequence parallelism (layout key sp=1) as the programs
# hold it.
#
# gpt-tiny (batch 16, 4 layers, fp32) under tp=2, tp=4 and pp=2 x tp=2 with
# and without sp=1: the sp programs reduce-scatter along the sequence
# (reduce_scatter_dim) and their largest arena is smaller than the
# tensor-parallel one's (the norms and residuals hold 1/tp of the sequence).
# sp=1 without tensor parallelism, and sp=2, are refused with a message.
# That sp trains like one rank is tests/test_ranks.sh's (its sp layouts).
# Prints "N passed, M failed".
set -u
carve=$1
. "$(dirname "$0")/tally.sh"
model="gpt --preset gpt-tiny --set batch=16,layers=4 --precision fp32"

# arena LAYOUT: compiles it into $tmp/dir and prints its largest arena in KiB
arena() {
  rm -rf "$tmp/dir"
  $carve compile $model --layout "$1" -o "$tmp/dir" 2>"$tmp/err" |
    awk '{ for (i = 1; i < NF; i++) if ($i == "arena") { v = $(i + 1); u = $(i + 2);
           sub(/;$/, "", u); print v * (u == "MiB" ? 1024 : u == "GiB" ? 1048576 : u == "KiB" ? 1 : 1 / 1024) } }'
}

for l in tp=2 tp=4 pp=2,tp=2,mb=2; do
  a=$(arena "$l")
  b=$(arena "$l,sp=1")
  if $carve explain "$tmp/dir" --rank 0 | grep -q 'reduce_scatter_dim'; then ok; else bad "$l,sp=1: no reduce_scatter_dim"; fi
  if [ -n "$a" ] && [ -n "$b" ] && awk -v a="$a" -v b="$b" 'BEGIN { exit !(b < a) }'; then
    ok
  else
    bad "$l: sp=1's arena ($b KiB) is not smaller than tp's ($a KiB)"; cat "$tmp/err"
  fi
done

# expect LAYOUT MESSAGE: refused with MESSAGE
expect() {
  if $carve compile $model --layout "$1" -o "$tmp/no" >"$tmp/out" 2>&1; then
    bad "$1 was not refused"
  elif grep -q "$2" "$tmp/out"; then
    ok
  else
    bad "$1: expected '$2', got: $(cat "$tmp/out")"
  fi
}
expect sp=1 "sp=1 splits the sequence over the tensor-parallel ranks: it needs tp >= 2"
expect tp=2,sp=2 "sp is 0 or 1"
tally
