#!/bin/sh
# test_nccl.sh CARVE PARAM_COMPARE TEST_CUDA: one rank on the GPU with NCCL
# communication (--comm nccl) against the same on the CPU (ctest
# nccl_one_rank; docs/gpu.md).
#
# `TEST_CUDA --probe` first: where backend "cuda" does not open (no driver,
# no device) the script prints "SKIPPED: why" and exits 77 before anything
# runs, so it never passes without having run.
#
#   1. gpt-tiny, `carve train` 10 steps in fp32: NCCL's communicators are
#      made (world and groups) and the losses match the CPU's within 1e-4.
#   2. gpt-tiny one-rank programs whose steps communicate over a group of
#      one: dp=1 in fp32 (all-reduces), dp=1,zero=1 in bf16 (shards,
#      reduce-scatters, all-gathers), dp=1,zero=3 in fp32 (gathers of the
#      parameters), 10 steps with --save-params: losses within 1e-4 (fp32)
#      or 2e-2 (bf16), parameters through param_compare within 1e-4 or 0.2
#      (as cuda_train).
#   3. dp=1,zero=3 with --overlap on (NCCL's transfers on their own stream,
#      compute waiting only where it reads them) and off: bit-identical
#      parameters.
# --comm nccl stops a run that cannot have NCCL, so a pass means NCCL ran.
# DUT=cpu puts the CPU backend and the host communication in the GPU's
# place (a check of this script where there is no GPU). Prints "N passed, M
# failed".
set -u
carve=$1
compare=$2
probe=$3
dut=${DUT:-cuda}
comm=nccl
[ "$dut" = cuda ] || comm=host
. "$(dirname "$0")/gpu_test.sh"
steps=10


# 1. carve train
for side in ref:cpu:host dut:$dut:$comm; do
  s=${side#*:}
  "$carve" train gpt --preset gpt-tiny --steps $steps --log-every 1 --precision fp32 --backend "${s%%:*}" \
    --comm "${s#*:}" >"$tmp/${side%%:*}.out" 2>&1 || echo "gpt-tiny on $s did not run: $(tail -1 "$tmp/${side%%:*}.out")"
done
if r=$(same_losses "$tmp/ref.out" "$tmp/dut.out" 1e-4 $steps); then
  ok
  echo "gpt-tiny train, $dut --comm $comm: $r"
else
  bad "gpt-tiny train, $dut --comm $comm: $r"
  tail -2 "$tmp/dut.out"
fi

# 2. programs that communicate over a group of one
for case in dp=1/fp32:1e-4:1e-4 dp=1,zero=1/bf16:2e-2:0.2 dp=1,zero=3/fp32:1e-4:1e-4; do
  layout=${case%%/*}
  prec=${case#*/}
  p=${prec%%:*}
  rest=${prec#*:}
  what="gpt-tiny $layout $p, $dut --comm $comm"
  rm -rf "$tmp/prog" "$tmp"/ref* "$tmp"/dut*
  if ! "$carve" compile gpt --preset gpt-tiny --precision "$p" --layout "$layout" -o "$tmp/prog" >/dev/null 2>&1; then
    bad "$what: does not compile"
    continue
  fi
  "$carve" run "$tmp/prog" --steps $steps --log-every 1 --backend cpu --save-params "$tmp/ref" >"$tmp/ref.out" 2>&1
  "$carve" run "$tmp/prog" --steps $steps --log-every 1 --backend "$dut" --comm $comm --save-params "$tmp/dut" \
    >"$tmp/dut.out" 2>&1
  if ! r=$(same_losses "$tmp/ref.out" "$tmp/dut.out" "${rest%%:*}" $steps); then
    bad "$what: $r"
    tail -qn2 "$tmp/ref.out" "$tmp/dut.out"
  elif ! "$compare" "$tmp/ref" 1 "$tmp/dut" 1 "${rest#*:}" .b_k >"$tmp/cmp" 2>&1; then
    bad "$what: parameters differ beyond ${rest#*:}"
    cat "$tmp/cmp"
  else
    ok
    echo "$what: $r; $(tail -1 "$tmp/cmp")"
  fi
done

# 3. the transfers on their own stream (compute waits for each only where it
# reads the output) against each in turn: bit-identical parameters
rm -rf "$tmp/prog" "$tmp"/on* "$tmp"/off*
"$carve" compile gpt --preset gpt-tiny --precision fp32 --layout dp=1,zero=3 -o "$tmp/prog" >/dev/null 2>&1
for ov in on off; do
  "$carve" run "$tmp/prog" --steps $steps --log-every 1 --backend "$dut" --comm $comm --overlap $ov \
    --save-params "$tmp/$ov" >"$tmp/$ov.out" 2>&1
done
[ -s "$tmp/on.rank0" ] && cmp -s "$tmp/on.rank0" "$tmp/off.rank0" && ok ||
  bad "gpt-tiny dp=1,zero=3, $dut --comm $comm: parameters differ with --overlap on and off"
tally
