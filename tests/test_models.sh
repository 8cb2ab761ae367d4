#!/bin/sh
# test_models.sh CARVE WORKDIR: every shipped model's tiny preset compiles,
# runs 15 training steps on real text (mlp on its synthetic data), and ends
# with a finite loss, below where it started for the models trained on text
# (mlp's synthetic data is new noise every step). Prints "N passed, M failed".
set -u
carve=$1
work=$2
mkdir -p "$work"
pass=0
fail=0
"$carve" data /usr/share/common-licenses/GPL-3 -o "$work/gpl.tok" > /dev/null || { echo "0 passed, 1 failed"; exit 1; }
for m in gpt:gpt-tiny bert:bert-tiny moe:moe-tiny llama:llama-tiny mlp:mlp-tiny; do
  model=${m%%:*}
  preset=${m#*:}
  data="--data $work/gpl.tok"
  learns=1
  [ "$model" = mlp ] && data="" && learns=0
  if "$carve" train "$model" --preset "$preset" $data --steps 15 --log-every 1 --lr 3e-3 > "$work/$model.out" 2>&1 &&
    awk -v learns=$learns '$1 == "step" {l[$2] = $4; n = $2}
      END {exit !(n == 15 && l[15] ~ /^[0-9.]+$/ && (!learns || l[15] < l[1]))}' "$work/$model.out"; then
    pass=$((pass + 1))
    echo "ok: $model ($preset): loss $(awk '$1 == "step" && $2 == 1 {print $4}' "$work/$model.out") -> $(awk '$1 == "step" && $2 == 15 {print $4}' "$work/$model.out")"
  else
    fail=$((fail + 1))
    echo "FAILED: $model ($preset)"
    tail -5 "$work/$model.out"
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
