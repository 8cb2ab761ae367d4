#!/bin/sh
# test_train.sh CARVE WORKDIR: training on real text.
#  1. a token file from the licence texts every Debian system ships;
#  2. gpt-tiny trained 300 steps on it, in bf16 mixed precision and in fp32,
#     must end well below the unigram entropy of the text (the best loss
#     without context), and bf16's mean loss over steps 280-300 must be within
#     2% of fp32's;
#  3. the same command again gives bit-identical losses (determinism), in
#     both precisions.
# Prints "N passed, M failed".
set -u
carve=$1
work=$2
mkdir -p "$work"
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAILED: $*"; }

"$carve" data /usr/share/common-licenses/* -o "$work/lic.tok" > "$work/data.out" || bad "carve data"
H=$(sed -n 's/.*unigram entropy \([0-9.]*\) nats.*/\1/p' "$work/data.out")
[ -n "$H" ] && ok "token file, unigram entropy $H nats" || bad "no entropy in: $(cat "$work/data.out")"

run() { # run PRECISION OUT
  "$carve" train gpt --preset gpt-tiny --data "$work/lic.tok" --steps 300 --log-every 10 --seed 7 --precision "$1" \
    > "$work/$2" 2>&1
}
for p in bf16 fp32; do
  run $p $p.1.out && ok "$p: 300 steps ran" || bad "$p: training failed: $(tail -3 "$work/$p.1.out")"
  grep -q "precision: $p" "$work/$p.1.out" && ok "$p: the run says its precision" || bad "$p: no precision line"
  first=$(awk '$1 == "step" && $2 == 1 {print $4}' "$work/$p.1.out")
  final=$(awk '$1 == "step" && $2 >= 280 {s += $4; n++} END {if (n) printf "%.4f", s / n}' "$work/$p.1.out")
  eval "final_$p=\$final"
  echo "$p: loss at step 1: $first; mean of steps 280-300: $final; unigram entropy: $H"
  if [ -n "$final" ] && awk -v f="$final" -v h="$H" 'BEGIN {exit !(f < h - 0.5)}'; then
    ok "$p: final loss $final is more than 0.5 nats below the unigram entropy $H"
  else
    bad "$p: final loss $final is not well below the unigram entropy $H"
  fi
  run $p $p.2.out || bad "$p: second run failed"
  awk '$1 == "step" {print $2, $4}' "$work/$p.1.out" > "$work/loss1"
  awk '$1 == "step" {print $2, $4}' "$work/$p.2.out" > "$work/loss2"
  if [ -s "$work/loss1" ] && cmp -s "$work/loss1" "$work/loss2"; then
    ok "$p: same seed, same program: identical losses"
  else
    bad "$p: losses differ between two identical runs"
  fi
done
if awk -v b="$final_bf16" -v f="$final_fp32" 'BEGIN {d = b - f; if (d < 0) d = -d; exit !(b > 0 && f > 0 && d <= 0.02 * f)}'; then
  ok "bf16's mean loss over steps 280-300 ($final_bf16) is within 2% of fp32's ($final_fp32)"
else
  bad "bf16's mean loss over steps 280-300 ($final_bf16) is not within 2% of fp32's ($final_fp32)"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
