#!/bin/sh
# test_cuda_train.sh CARVE PARAM_COMPARE TEST_CUDA: whole training runs on
# the CUDA backend against the same runs on the CPU backend (ctest
# cuda_train; docs/gpu.md).
#
# First `TEST_CUDA --probe` asks whether backend "cuda" opens here; when it
# does not (no driver, no device, a backend not finished) the script prints
# "SKIPPED: why" and exits 77 before anything else runs.
#
#   1. gpt-tiny (carve train --preset gpt-tiny), 50 steps on each backend,
#      same seed: in fp32 every step's loss within 1e-4 relative, in bf16
#      within 2e-2.
#   2. Whole programs: the one-rank plans of the equivalence suite
#      (test_ranks.sh's models at its size, batch 16 and 4 layers, as one
#      rank with microbatches, recompute and both) compiled once, run 10
#      steps with --save-params on each backend: losses within the same
#      tolerances, parameters compared with param_compare within 1e-4 (fp32)
#      or 0.2 (bf16, what ranks_bf16 allows; relative 2-norm per tensor),
#      attention's key bias left out as there (its gradient is rounding
#      noise).
# MODELS and LAYOUTS in the environment replace the lists below (LAYOUTS:
# space-separated, "-" for no layout), TINY_STEPS the 50 steps; DUT=cpu puts
# the CPU backend in the GPU's place (a check of this script on a machine
# without a GPU: everything must pass). Prints "N passed, M failed".
set -u
carve=$1
compare=$2
probe=$3
dut=${DUT:-cuda}
. "$(dirname "$0")/gpu_test.sh"
models=${MODELS:-"mlp:mlp-tiny gpt:gpt-tiny bert:bert-tiny moe:moe-tiny"}
layouts=${LAYOUTS:-"- mb=4 mb=2,recompute=selective mb=4,recompute=full"}
steps=10


# 1. gpt-tiny, 50 steps
tiny=${TINY_STEPS:-50}
for prec in fp32:1e-4 bf16:2e-2; do
  p=${prec%%:*}
  tol=${prec#*:}
  for side in ref:cpu dut:$dut; do
    "$carve" train gpt --preset gpt-tiny --steps "$tiny" --log-every 1 --precision "$p" --backend "${side#*:}" \
      >"$tmp/tiny-${side%%:*}.out" 2>&1 || echo "gpt-tiny $p on ${side#*:} did not run: $(tail -1 "$tmp/tiny-${side%%:*}.out")"
  done
  if r=$(same_losses "$tmp/tiny-ref.out" "$tmp/tiny-dut.out" "$tol" "$tiny"); then
    ok
    echo "gpt-tiny $p, $tiny steps: $r"
  else
    bad "gpt-tiny $p, $tiny steps: losses differ beyond $tol: $r"
    paste "$tmp/la" "$tmp/lb" | head -5 | sed 's/^/  | /'
  fi
done

# 2. one-rank plans of the equivalence suite, whole programs
for spec in $models; do
  model=${spec%%:*}
  preset=${spec#*:}
  for layout in $layouts; do
    for prec in fp32:1e-4:1e-4 bf16:2e-2:0.2; do
      p=${prec%%:*}
      rest=${prec#*:}
      ltol=${rest%%:*}
      ptol=${rest#*:}
      what="$model $layout $p"
      dir=$tmp/prog
      rm -rf "$dir" "$tmp"/ref* "$tmp"/dut*
      if [ "$layout" = - ]; then set -- ; else set -- --layout "$layout"; fi
      if ! "$carve" compile "$model" --preset "$preset" --set batch=16,layers=4 --precision "$p" "$@" -o "$dir" \
        >/dev/null 2>"$tmp/compile.err"; then
        bad "$what: does not compile: $(head -1 "$tmp/compile.err")"
        continue
      fi
      ran=yes
      "$carve" run "$dir" --steps $steps --log-every 1 --backend cpu --save-params "$tmp/ref" >"$tmp/ref.out" 2>&1 ||
        ran=no
      "$carve" run "$dir" --steps $steps --log-every 1 --backend "$dut" --save-params "$tmp/dut" >"$tmp/dut.out" 2>&1 ||
        ran=no
      if [ $ran = no ]; then
        bad "$what: did not run: $(tail -qn1 "$tmp/ref.out" "$tmp/dut.out" | tr '\n' ' ')"
      elif ! r=$(same_losses "$tmp/ref.out" "$tmp/dut.out" "$ltol" $steps); then
        bad "$what: losses differ beyond $ltol: $r"
      elif ! "$compare" "$tmp/ref" 1 "$tmp/dut" 1 "$ptol" .b_k >"$tmp/cmp" 2>&1; then
        bad "$what: parameters differ beyond $ptol"
        cat "$tmp/cmp"
      else
        ok
        echo "$what: $r; $(tail -1 "$tmp/cmp")"
      fi
    done
  done
done
tally
