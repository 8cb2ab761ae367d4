#!/bin/sh
# test_comm_truth.sh CARVE [MODELS]: the collectives a plan lists against those its
# rank programs run (`carve explain`). The partial input gradients of one
# tensor are all-reduced once, as their sum; a tied parameter's gradient is
# listed once; each stage's backward all-reduces of activations in plan.json
# match the programs' all-reduces of input gradients, per step (MODELS,
# default gpt:gpt-tiny: bert's post-norm residual sums a whole gradient with
# the partial ones, which the programs still reduce one by one). Prints
# "N passed, M failed".
set -u
carve=$1
. "$(dirname "$0")/tally.sh"
dims="--set batch=16,layers=4"

# tp=2 split Megatron's way (a model wide enough that the planner splits the
# heads: products on a tiny model's narrow splits run too far from peak): the
# hidden state q, k and v read gets one all-reduce a layer
"$carve" plan gpt --preset gpt-tiny --set batch=4,layers=2,hidden=1024,heads=16,seq=256 --cluster dgx-a100 \
  --nodes 1 --devices-per-node 2 --manual tp=2,pp=1 --quiet -o "$tmp/tp2" >/dev/null 2>&1 || bad "plan tp=2"
"$carve" explain "$tmp/tp2" --rank 0 >"$tmp/tp2.txt" 2>&1
n=$(grep -c ' all_reduce  *d\.layers\.[0-9]*\.h/acc' "$tmp/tp2.txt")
[ "$n" = 2 ] && ok || bad "tp=2: $n all-reduces of the summed q, k, v input gradients, want 2"
n=$(grep -c ' all_reduce  *d\.layers\.[0-9]*\.[qkv]/einsum/einsum\.da' "$tmp/tp2.txt")
[ "$n" = 0 ] && ok || bad "tp=2: $n all-reduces of single q, k or v input gradients, want 0"

# a tied parameter: one gradient all-reduce, listed once
"$carve" plan gpt --preset gpt-tiny --cluster dgx-a100 --mesh 1x8 --intra-only --force-dp >"$tmp/dp.txt" 2>&1
n=$(awk '$1 == "all-reduce" && $NF == "wte" { print $5 }' "$tmp/dp.txt")
[ "$n" = 1 ] && ok || bad "forced data parallelism: wte's all-reduce counted '$n' times, want 1"

# plan.json's stages against the programs of each stage's first rank:
# backward all-reduces of tensors that are not parameters (input gradients)
stage_plan() { # PLAN.JSON STAGE -> the count of such all-reduces per step
  awk -v want="$2" -v params="$3" '
    BEGIN { while ((getline l < params) > 0) { gsub(/[0-9]+/, "N", l); p[l] = 1 } }
    /"layers": \[/ { s++ }
    s == want + 1 && /"kind": "all-reduce"/ && /"phase": "backward"/ {
      t = $0; sub(/.*"tensor": "/, "", t); sub(/".*/, "", t)
      c = $0; sub(/.*"count_per_step": /, "", c); sub(/,.*/, "", c)
      gsub(/[0-9]+/, "N", t)
      if (!(t in p)) n += c
    }
    END { print n + 0 }' "$1"
}
for spec in ${2:-gpt:gpt-tiny}; do
  model=${spec%%:*}
  if ! "$carve" plan "$model" --preset "${spec#*:}" $dims --cluster local --devices-per-node 4 \
    --manual "tp=2,pp=2,mb=2" -o "$tmp/$model" >"$tmp/$model.out" 2>&1; then
    bad "$model: no plan"
    continue
  fi
  for stage in 0 1; do
    "$carve" explain "$tmp/$model" --rank $((stage * 2)) >"$tmp/x.txt" 2>&1
    awk '$2 == "param" { print $5 }' "$tmp/x.txt" >"$tmp/params"
    want=$(stage_plan "$tmp/$model/plan.json" $stage "$tmp/params")
    have=$(grep -c ' all_reduce  *d\..*\(einsum\.da\|/acc\.\)' "$tmp/x.txt")
    [ "$want" = "$have" ] && ok ||
      bad "$model stage $stage: plan lists $want input-gradient all-reduces per step, the programs run $have"
  done
done
tally
