#!/bin/sh
# test_train.sh CARVE WORKDIR: training on real text.
#  1. a token file from the licence texts every Debian system ships;
#  2. gpt-tiny trained 300 steps on it must end well below the unigram
#     entropy of the text (the best loss without context);
#  3. the same command again gives bit-identical losses (determinism).
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

run() {
  "$carve" train gpt --preset gpt-tiny --data "$work/lic.tok" --steps 300 --log-every 10 --seed 7 > "$work/$1" 2>&1
}
run train1.out && ok "300 steps ran" || bad "training failed: $(tail -3 "$work/train1.out")"
first=$(awk '$1 == "step" && $2 == 1 {print $4}' "$work/train1.out")
final=$(awk '$1 == "step" && $2 >= 280 {s += $4; n++} END {if (n) printf "%.4f", s / n}' "$work/train1.out")
echo "loss at step 1: $first; mean of steps 280-300: $final; unigram entropy: $H"
if [ -n "$final" ] && awk -v f="$final" -v h="$H" 'BEGIN {exit !(f < h - 0.5)}'; then
  ok "final loss $final is more than 0.5 nats below the unigram entropy $H"
else
  bad "final loss $final is not well below the unigram entropy $H"
fi

run train2.out || bad "second run failed"
awk '$1 == "step" {print $2, $4}' "$work/train1.out" > "$work/loss1"
awk '$1 == "step" {print $2, $4}' "$work/train2.out" > "$work/loss2"
if [ -s "$work/loss1" ] && cmp -s "$work/loss1" "$work/loss2"; then
  ok "same seed, same program: identical losses"
else
  bad "losses differ between two identical runs"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
