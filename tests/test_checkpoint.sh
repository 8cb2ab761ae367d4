#!/bin/sh
# test_checkpoint.sh CARVE PARAM_COMPARE: checkpoints lose nothing.
#
# - Stop and resume on the same plan is bit-identical to a run that never
#   stopped (the parameter files of every rank compare equal byte for byte,
#   and so do the losses): one rank, dp=2 x tp=2, and a 1F1B pipeline with
#   two replicas (4 ranks each).
# - Resuming on another plan reshards the checkpoint: dp=2 -> tp=2, dp=2 ->
#   1 rank, ZeRO 3 shards of 3 replicas (padded) -> 1 rank, ZeRO 1 optimizer chunks -> tp=2
#   in fp32 (losses within 1e-5 relative of the run that never
#   stopped, parameters within 1e-4: what N ranks against one are held to);
#   dp=2 x tp=2 -> 1 rank in bf16 and an fp32 checkpoint resumed in bf16
#   (the bf16 tolerances of ranks_bf16).
# - A run killed (SIGKILL, through CARVE_FAULT) while it writes a checkpoint,
#   in its shards or before its manifest, leaves the previous checkpoint
#   whole; --resume takes it and the run ends bit-identical.
# - --keep K keeps the newest K; a folder without a manifest is no checkpoint.
# - What does not fit is refused with the tensor named: another model size,
#   another optimizer; a damaged shard (hash), a cut shard, a broken manifest.
# - --init-from a safetensors file from 'carve export' gives the parameters
#   the checkpoint held, bit for bit.
# Prints "N passed, M failed".
set -u
case $1 in /*) carve=$1 ;; *) carve=$(pwd)/$1 ;; esac
compare=$2
. "$(dirname "$0")/tally.sh"
. "$(dirname "$0")/mpi.sh"
model="gpt --preset gpt-tiny --set batch=16,layers=2"
bad() { # tally.sh's, with the last run's output
  fail=$((fail + 1))
  echo "FAILED: $1"
  [ -f "$tmp/log" ] && sed 's/^/  | /' "$tmp/log" | tail -8
}

# compile NAME LAYOUT [options]: the plan's programs in $tmp/NAME ("" layout: one rank)
compile() {
  name=$1
  layout=$2
  shift 2
  if [ -n "$layout" ]; then
    $carve compile $model --layout "$layout" -o "$tmp/$name" "$@" >/dev/null
  else
    $carve compile $model -o "$tmp/$name" "$@" >/dev/null
  fi
}
# run NAME RANKS OUT [options]: runs plan NAME, losses (one per line) to $tmp/OUT.loss
run() {
  name=$1
  n=$2
  out=$3
  shift 3
  if [ "$n" -eq 1 ]; then
    timeout 120 "$carve" run "$tmp/$name" --log-every 1 --save-params "$tmp/$out" "$@" >"$tmp/log" 2>&1
  else
    timeout 120 $mpirun -np "$n" "$carve" run "$tmp/$name" --log-every 1 --save-params "$tmp/$out" "$@" >"$tmp/log" 2>&1
  fi
  status=$?
  awk '/^step /{print $2, $4}' "$tmp/log" >"$tmp/$out.loss"
  return $status
}
# same_files A B N: rank files A.rank0.. equal B.rank0.. byte for byte
same_files() {
  r=0
  while [ "$r" -lt "$3" ]; do
    cmp -s "$tmp/$1.rank$r" "$tmp/$2.rank$r" || return 1
    r=$((r + 1))
  done
}
# losses_match REF RESUMED TOL: every step the resumed run ran matches the reference's
losses_match() {
  [ -s "$tmp/$2.loss" ] && awk -v tol="$3" 'NR == FNR { ref[$1] = $2; next }
    { if (!($1 in ref)) exit 1; d = $2 - ref[$1]; if (d < 0) d = -d; r = ref[$1] < 0 ? -ref[$1] : ref[$1]
      if (d > tol * r) exit 1; seen++ } END { exit seen ? 0 : 1 }' "$tmp/$1.loss" "$tmp/$2.loss"
}

# bit_identity NAME LAYOUT RANKS: 6 steps straight against 3 + 3 resumed
bit_identity() {
  compile "$1" "$2" || { bad "$1: compile"; return; }
  run "$1" "$3" "$1.full" --steps 6 &&
    run "$1" "$3" "$1.half" --steps 3 --checkpoint-dir "$tmp/$1.ck" --checkpoint-every 2 &&
    run "$1" "$3" "$1.resumed" --steps 6 --resume "$tmp/$1.ck" || { bad "$1: runs"; return; }
  if grep -q "resuming after step 3" "$tmp/log" && same_files "$1.full" "$1.resumed" "$3" &&
    losses_match "$1.full" "$1.resumed" 0; then ok; else bad "$1: stop and resume is not bit-identical"; fi
}
bit_identity one "" 1
bit_identity dptp "dp=2,tp=2" 4
bit_identity pipe "dp=2,pp=2,mb=2,schedule=1f1b" 4

# resharding, in fp32 (a bf16 run's rounding depends on how tensors are
# split, so bf16 plans agree only to ranks_bf16's tolerances): the dp=2
# checkpoint at step 3 resumed on tp=2 and on one rank; the bf16 dp=2 x tp=2
# one on one bf16 rank; an fp32 one in bf16
compile dp "dp=2" --precision fp32 && run dp 2 dp.half --steps 3 --checkpoint-dir "$tmp/dp.ck" || bad "dp: run"
compile tp "tp=2" --precision fp32 || bad "tp: compile"
compile one2 "" --microbatches 2 --precision fp32 && run one2 1 one2.full --steps 6 || bad "one rank: run"
compile onebf "" --microbatches 2 --precision bf16 && run onebf 1 onebf.full --steps 6 || bad "bf16: run"
reshard() { # NAME CK PLAN RANKS REF LOSS-TOL PARAM-TOL (REF: a one-rank run that never stopped)
  if run "$3" "$4" "$1" --steps 6 --resume "$tmp/$2" && grep -q "resharded" "$tmp/log" &&
    losses_match "$5" "$1" "$6" && "$compare" "$tmp/$5" 1 "$tmp/$1" "$4" "$7" b_k >/dev/null; then
    ok
  else
    bad "$1: resharded resume"
  fi
}
# ZeRO 3 over 3 replicas: a 128-element gain is cut into chunks of 43, the last one padded
model="gpt --preset gpt-tiny --set batch=12,layers=2"
compile z3 "dp=3,zero=3" --precision fp32 && run z3 3 z3.half --steps 3 --checkpoint-dir "$tmp/z3.ck" || bad "zero3: run"
compile one3 "" --microbatches 3 --precision fp32 && run one3 1 one3.full --steps 6 || bad "one rank, batch 12: run"
model="gpt --preset gpt-tiny --set batch=16,layers=2"
compile z1 "dp=2,zero=1" --precision fp32 && run z1 2 z1.half --steps 3 --checkpoint-dir "$tmp/z1.ck" || bad "zero1: run"
reshard dp_to_tp dp.ck tp 2 one2.full 1e-5 1e-4
reshard zero3_to_one z3.ck one3 1 one3.full 1e-5 1e-4
reshard zero1_to_tp z1.ck tp 2 one2.full 1e-5 1e-4
reshard dp_to_one dp.ck one2 1 one2.full 1e-5 1e-4
reshard four_to_one dptp.ck onebf 1 onebf.full 1e-4 0.2
reshard fp32_to_bf16 dp.ck onebf 1 onebf.full 2e-3 0.2

# a crash while writing: killed in the shards of step 4, and (2 ranks) before the manifest of step 4
for fault in checkpoint-shard checkpoint-manifest; do
  rm -rf "$tmp/crash.ck"
  run dp 2 crash.before --steps 2 --checkpoint-dir "$tmp/crash.ck" || bad "$fault: first run"
  CARVE_FAULT=$fault run dp 2 crash --steps 6 --resume "$tmp/crash.ck" --checkpoint-dir "$tmp/crash.ck" \
    --checkpoint-every 2
  killed=$?
  [ -d "$tmp/crash.ck/step-00000004" ] && [ ! -f "$tmp/crash.ck/step-00000004/manifest.json" ] && [ "$killed" -ne 0 ] ||
    bad "$fault: the run was not stopped inside the checkpoint of step 4"
  run dp 2 dp.crashed --steps 6 --resume "$tmp/crash.ck" --checkpoint-dir "$tmp/crash.ck" --checkpoint-every 2 &&
    run dp 2 dp.full --steps 6
  if same_files dp.full dp.crashed 2 && [ -f "$tmp/crash.ck/step-00000006/manifest.json" ]; then ok; else
    bad "$fault: resumed after a crash, not bit-identical"
  fi
done

# a full disk (a file size limit, the signal ignored: writes fail with EFBIG) while writing the
# checkpoint of step 4: the run stops with the file named, step 2's checkpoint stays and resumes
rm -rf "$tmp/full.ck"
run one 1 full.before --steps 2 --checkpoint-dir "$tmp/full.ck" || bad "full disk: first run"
(
  trap '' XFSZ
  ulimit -f 2000
  run one 1 full --steps 4 --resume "$tmp/full.ck" --checkpoint-dir "$tmp/full.ck"
)
status=$?
if [ "$status" -eq 1 ] && grep -q "cannot write the checkpoint .*step-00000004/rank0.shard: File too large" "$tmp/log" &&
  [ ! -f "$tmp/full.ck/step-00000004/manifest.json" ] &&
  run one 1 full.after --steps 6 --resume "$tmp/full.ck" && grep -q "resuming after step 2" "$tmp/log" &&
  same_files one.full full.after 1; then ok; else bad "full disk while writing a checkpoint (status $status)"; fi
# a step folder that is a file: refused with the reason
mkdir -p "$tmp/file.ck" && : >"$tmp/file.ck/step-00000001"
if ! run one 1 file --steps 1 --checkpoint-dir "$tmp/file.ck" && grep -q "step-00000001: Not a directory" "$tmp/log"
then ok; else bad "a step folder that is a file"; fi

# --keep: the newest two of three; a restartable command starts fresh on an empty folder
run one 1 keep --steps 3 --checkpoint-dir "$tmp/keep.ck" --checkpoint-every 1 --keep 2 --resume "$tmp/keep.ck"
if grep -q "no checkpoint in" "$tmp/log" && [ "$(ls "$tmp/keep.ck")" = "step-00000002
step-00000003" ]; then ok; else bad "--keep 2 kept: $(ls "$tmp/keep.ck" | tr '\n' ' ')"; fi

# a run resumed from an earlier checkpoint abandons the later ones: its first checkpoint removes them
run one 1 tl --steps 4 --checkpoint-dir "$tmp/tl.ck" --checkpoint-every 1 --keep 5 &&
  run one 1 tl2 --steps 2 --resume "$tmp/tl.ck/step-00000001" --checkpoint-dir "$tmp/tl.ck" --checkpoint-every 1 --keep 5
if [ "$(ls "$tmp/tl.ck" | tr '\n' ' ')" = "step-00000001 step-00000002 " ]; then ok; else
  bad "rolled back: the abandoned checkpoints stay: $(ls "$tmp/tl.ck" | tr '\n' ' ')"
fi
# step numbers past 8 digits
mkdir "$tmp/big.ck" && cp -r "$tmp/one.ck/step-00000003" "$tmp/big.ck/step-99999999" &&
  sed -i 's/"step": 3/"step": 99999999/' "$tmp/big.ck/step-99999999/manifest.json"
if run one 1 big --steps 100000001 --resume "$tmp/big.ck" --checkpoint-dir "$tmp/big.ck" --checkpoint-every 1 --keep 1 &&
  grep -q "resuming after step 99999999" "$tmp/log" && [ "$(ls "$tmp/big.ck")" = "step-100000001" ]; then ok; else
  bad "9-digit steps: $(ls "$tmp/big.ck" | tr '\n' ' ')"
fi
# one run at a time writes into a checkpoint folder
timeout 60 "$carve" run "$tmp/one" --steps 100000 --quiet --checkpoint-dir "$tmp/lock.ck" --checkpoint-every 1 &
first=$!
for _ in $(seq 100); do [ -f "$tmp/lock.ck/step-00000002/manifest.json" ] && break; sleep 0.1; done
if ! run one 1 second --steps 3 --checkpoint-dir "$tmp/lock.ck" && grep -q "another run is writing checkpoints" "$tmp/log"
then ok; else bad "a second run into a folder another run writes"; fi
kill "$first" 2>/dev/null
wait "$first" 2>/dev/null
# the restartable form, with the folder named two ways
if (cd "$tmp" && run one 1 fresh --steps 1 --resume ./fresh.ck/ --checkpoint-dir fresh.ck) &&
  grep -q "no checkpoint in" "$tmp/log"; then ok; else bad "--resume ./X/ with --checkpoint-dir X"; fi

# refusals, each naming what does not fit
refused() { # NAME PATTERN RANKS-PLAN...
  name=$1
  pattern=$2
  shift 2
  if ! run "$@" >/dev/null 2>&1 && grep -q -- "$pattern" "$tmp/log" && ! grep -qi "internal error\|sanitizer" "$tmp/log"; then
    ok
  else
    bad "$name: not refused with '$pattern'"
  fi
}
$carve compile gpt --preset gpt-tiny --set batch=16,layers=2,hidden=64 -o "$tmp/small" >/dev/null
refused "another model size" "tensor 'wte' is \[256,128\]" small 1 x --steps 6 --resume "$tmp/one.ck"
compile sgd "" --optimizer sgd
refused "another optimizer" "has no tensor 'wte.mom'" sgd 1 x --steps 6 --resume "$tmp/one.ck"
cp -r "$tmp/one.ck/step-00000003" "$tmp/flip"
printf '\377' | dd of="$tmp/flip/rank0.shard" bs=1 seek=100 conv=notrunc 2>/dev/null
refused "damaged shard" "does not match its hash" one 1 x --steps 6 --resume "$tmp/flip"
cp -r "$tmp/one.ck/step-00000003" "$tmp/cut" && truncate -s 1000 "$tmp/cut/rank0.shard"
refused "cut shard" "past the end of its shard file" one 1 x --steps 6 --resume "$tmp/cut"
cp -r "$tmp/one.ck/step-00000003" "$tmp/broken" && printf '{"format": "carve-checkpoint", "ranks": [' \
  >"$tmp/broken/manifest.json"
refused "broken manifest" "malformed JSON" one 1 x --steps 6 --resume "$tmp/broken"
cp -r "$tmp/one.ck/step-00000003" "$tmp/escape" && sed -i 's|"rank0.shard"|"../../../etc/passwd"|' "$tmp/escape/manifest.json"
refused "a shard outside the folder" "expected its file rank0.shard" one 1 x --steps 6 --resume "$tmp/escape"
cp -r "$tmp/one.ck/step-00000003" "$tmp/huge" && sed -i '0,/"numel": [0-9]*/s//"numel": 1e300/' "$tmp/huge/manifest.json"
refused "an absurd element count" "a piece without its tensor" one 1 x --steps 6 --resume "$tmp/huge"
cp -r "$tmp/one.ck/step-00000003" "$tmp/world" && sed -i 's/"world": 1/"world": 1000000/' "$tmp/world/manifest.json"
refused "a world the ranks do not list" "lists every rank's shard" one 1 x --steps 6 --resume "$tmp/world"
# the newest checkpoint damaged: the message points to the one before
cp -r "$tmp/one.ck" "$tmp/dmg.ck" && truncate -s 100 "$tmp/dmg.ck/step-00000003/rank0.shard"
refused "a damaged newest checkpoint" "an earlier checkpoint is .*step-00000002" one 1 x --steps 6 --resume "$tmp/dmg.ck"
mkdir "$tmp/empty"
refused "no checkpoint" "holds no complete checkpoint" one 1 x --steps 6 --resume "$tmp/empty"
ln -s /dev/zero "$tmp/zero.safetensors"
refused "a device as safetensors" "not a regular file" one 1 x --steps 1 --init-from "$tmp/zero.safetensors"

# export and --init-from: the parameters of the checkpoint, bit for bit
if $carve export "$tmp/one.ck" -o "$tmp/one.safetensors" >"$tmp/log" 2>&1 &&
  run one 1 from_st --steps 0 --init-from "$tmp/one.safetensors" &&
  run one 1 at_ck --steps 3 --resume "$tmp/one.ck/step-00000003" && same_files from_st at_ck 1; then ok; else
  bad "export, then --init-from"
fi
tally
