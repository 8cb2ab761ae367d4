#!/bin/sh
# test_overlap_runs.sh CARVE: communication beside the compute
# (runtime/overlap.c) changes when transfers run, never what they compute.
#
# For gpt-tiny under dp=2 with two microbatches (a layer's gradients reduced
# as one bucket while the backward goes on), dp=2 x tp=2, ZeRO 3 (the
# parameters gathered one layer ahead) and a 2-stage 1F1B pipeline: the
# programs run with --overlap on and --overlap off give the same loss at
# every step and bit-identical parameters; the overlapped run reports how
# long its step thread waited, the serial one that none of it overlapped;
# the programs hold one all-reduce per layer bucket (grad.bucketN) and no
# gradient all-reduce of a single parameter of a layer. Prints "N passed,
# M failed".
set -u
carve=$1
. "$(dirname "$0")/tally.sh"
. "$(dirname "$0")/mpi.sh"
steps=6
for layout in "dp=2,mb=2" "dp=2,tp=2" "dp=2,mb=2,zero=3" "pp=2,mb=4,schedule=1f1b"; do
  n=1
  for kv in $(echo "$layout" | tr ',' ' '); do
    case $kv in dp=* | tp=* | pp=*) n=$((n * ${kv#*=})) ;; esac
  done
  rm -rf "$tmp/p"
  if ! "$carve" compile gpt --preset gpt-tiny --set batch=16,layers=4 --layout "$layout" --precision fp32 \
    -o "$tmp/p" >/dev/null 2>"$tmp/c.err"; then
    bad "$layout: does not compile: $(head -2 "$tmp/c.err")"
    continue
  fi
  for ov in on off; do
    rm -f "$tmp/$ov".rank*
    timeout 120 $mpirun -np $n "$carve" run "$tmp/p" --steps $steps --log-every 1 --overlap $ov \
      --save-params "$tmp/$ov" >"$tmp/$ov.out" 2>&1 || bad "$layout --overlap $ov: did not run: $(tail -2 "$tmp/$ov.out")"
  done
  grep '^step' "$tmp/on.out" | awk '{ print $1, $2, $3, $4 }' >"$tmp/a"
  grep '^step' "$tmp/off.out" | awk '{ print $1, $2, $3, $4 }' >"$tmp/b"
  [ "$(wc -l <"$tmp/a")" = $steps ] && cmp -s "$tmp/a" "$tmp/b" && ok ||
    bad "$layout: losses differ with and without overlap: $(paste "$tmp/a" "$tmp/b" | head -3)"
  same=yes
  k=0
  while [ $k -lt $n ]; do
    cmp -s "$tmp/off.rank$k" "$tmp/on.rank$k" || same="no (rank $k)"
    k=$((k + 1))
  done
  [ "$same" = yes ] && ok || bad "$layout: parameters differ with and without overlap: $same"
  grep -q 'overlapped with compute but for [0-9.]* ms/step' "$tmp/on.out" && ok ||
    bad "$layout: the overlapped run does not report its wait: $(grep communication "$tmp/on.out")"
  grep -q 'none of it overlapped' "$tmp/off.out" && ok ||
    bad "$layout: the serial run does not say so: $(grep communication "$tmp/off.out")"
done
# the buckets: gpt-tiny dp=2 has 4 layers and the embedding's bucket
"$carve" compile gpt --preset gpt-tiny --set batch=16,layers=4 --layout dp=2 -o "$tmp/bk" >/dev/null 2>&1 || bad "dp=2 compiles"
"$carve" explain "$tmp/bk" --rank 0 >"$tmp/x.txt" 2>&1
n=$(grep -c ' all_reduce  *grad\.bucket[0-9]' "$tmp/x.txt")
[ "$n" = 5 ] && ok || bad "dp=2: $n bucket all-reduces, want 5 (4 layers and the rest)"
n=$(grep -c ' all_reduce  *layers\.[0-9]*\.[a-z_]*\.grad ' "$tmp/x.txt")
[ "$n" = 0 ] && ok || bad "dp=2: $n all-reduces of a single layer parameter's gradient, want 0"
tally
