#!/bin/sh
# test_sp.sh CARVE: sequence parallelism (layout key sp=1) as the programs
# hold it.
#
# gpt-tiny (batch 16, 4 layers, fp32) under tp=2, tp=4 and pp=2 x tp=2 with
# and without sp=1: the sp programs reduce-scatter along the sequence
# (reduce_scatter_dim), their arenas are smaller than the tensor-parallel
# ones' in sum over the ranks (the norms and residuals hold 1/tp of the
# sequence) and no larger at the largest (a stage whose largest buffers sp
# does not split keeps its arena: gpt-tiny's first stage under pp=2, whose
# plan splits the embedding over hidden).
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

# arenas: the arena of every rank of $tmp/dir in KiB, summed
arenas() {
  n=$(ls "$tmp/dir"/rank*.prog | wc -l)
  r=0
  while [ $r -lt "$n" ]; do
    $carve explain "$tmp/dir" --rank $r | awk '$1 == "arena" { u = $3; print $2 * (u == "MiB" ? 1024 : u == "GiB" ? 1048576 : u == "KiB" ? 1 : 1 / 1024) }'
    r=$((r + 1))
  done | awk '{ s += $1 } END { print s }'
}

for l in tp=2 tp=4 pp=2,tp=2,mb=2; do
  a=$(arena "$l")
  sa=$(arenas)
  b=$(arena "$l,sp=1")
  sb=$(arenas)
  if $carve explain "$tmp/dir" --rank 0 | grep -q 'reduce_scatter_dim'; then ok; else bad "$l,sp=1: no reduce_scatter_dim"; fi
  if [ -n "$a" ] && [ -n "$b" ] && awk -v a="$a" -v b="$b" -v sa="$sa" -v sb="$sb" 'BEGIN { exit !(b <= a && sb < sa) }'; then
    ok
  else
    bad "$l: sp=1's arenas (largest $b KiB, sum $sb KiB) are not smaller than tp's ($a KiB, $sa KiB)"; cat "$tmp/err"
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
