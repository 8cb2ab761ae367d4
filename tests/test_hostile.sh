#!/bin/sh
# test_hostile.sh CARVE TESTS_DIR: every reader of carve's input files against hostile
# or accidental bad input: devices, FIFOs, directories, files over the size
# limits, token files that lie about their size, plan files with NaN,
# infinite, negative, fractional or absurd values, JSON built to exhaust
# memory or the stack, and a model of 100,000 statements.
#
# Each case runs under `timeout 10` and, except in a sanitizer build (whose
# shadow memory needs more address space), under `ulimit -v` of 4 GB, and
# must end with the expected exit status and a message naming what and where.
# A FIFO case that hangs is caught by the timeout (status 124), a memory
# blow-up by the ulimit (a crash or "out of memory"), so neither can pass.
# Prints "N passed, M failed"; the exit status is nonzero when any failed.
set -u
case $1 in
  /*) carve=$1 ;;
  *) carve=$(pwd)/$1 ;;
esac
dir=$(cd "$2" && pwd) || exit 2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/carve-hostile.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
cd "$tmp" || exit 2
LC_ALL=C
export LC_ALL
pass=0
fail=0
limit_kb=4000000
if grep -q __asan_init "$carve" 2>/dev/null; then
  limit_kb=unlimited
  echo "note: a sanitizer build: no ulimit -v"
fi

# expect STATUS PATTERN ARGS...: carve ARGS ends with STATUS within 10 s and
# bounded memory, and PATTERN (grep) is in what it printed.
expect() {
  want=$1
  pattern=$2
  shift 2
  (ulimit -v "$limit_kb" && exec timeout 10 "$carve" "$@") >out 2>&1 </dev/null
  got=$?
  if [ "$got" -eq "$want" ] && grep -q -- "$pattern" out; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAILED: carve $*: status $got (want $want, and '$pattern'), output:"
    cut -c1-200 out | head -6 | sed 's/^/  | /'
  fi
}

# ------------------------------------------------- devices, FIFOs, directories
mkfifo fifo
mkdir adir
expect 1 "/dev/zero: error: cannot read the model: a character device, not a regular file" check /dev/zero
expect 1 "fifo: error: cannot read the model: a FIFO, not a regular file" check fifo
expect 1 "adir: error: cannot read the model: a directory, not a regular file" check adir
expect 1 "/dev/urandom: error: cannot read the cluster: a character device" plan gpt --cluster /dev/urandom
expect 1 "fifo: error: cannot read the cluster: a FIFO" plan gpt --cluster fifo
expect 1 "cannot read token file '/dev/zero': a character device" train gpt --preset gpt-tiny --data /dev/zero --steps 1
expect 1 "cannot read token file 'fifo': a FIFO" train gpt --preset gpt-tiny --data fifo --steps 1
expect 0 "wrote" compile gpt --preset gpt-tiny -o prog
expect 1 "cannot read token file '/dev/zero': a character device" run prog --data /dev/zero --steps 1
expect 1 "cannot read token file 'fifo': a FIFO" run prog --data fifo --steps 1
expect 1 "fifo: cannot read the plan: a FIFO, not a regular file" simulate fifo
expect 1 "/dev/zero: cannot read the plan: a character device" simulate /dev/zero
expect 1 "cannot read '/dev/zero': a character device" data /dev/zero -o tokens
expect 1 "cannot read program '/dev/zero': a character device" run /dev/zero --steps 1
expect 1 "cannot read program 'fifo': a FIFO" run fifo --steps 1
expect 1 "cannot read '/dev/zero': a character device" run prog --steps 1 --init-from /dev/zero
expect 1 "'fifo' is not a checkpoint folder" run prog --steps 1 --resume fifo
[ -p fifo ] && [ -d adir ] && pass=$((pass + 1)) || {
  fail=$((fail + 1))
  echo "FAILED: the FIFO or the directory was replaced"
}

# --------------------------------------------------------- files over limits
truncate -s 17M big.graph && cp big.graph big.cluster
expect 1 "big.graph: error: cannot read the model: 17.00 MiB, more than the limit of 16.00 MiB" check big.graph
expect 1 "big.cluster: error: cannot read the cluster: 17.00 MiB, more than the limit" plan gpt --cluster big.cluster
if truncate -s 65G big.tok 2>/dev/null; then # sparse: takes no room
  expect 1 "big.tok': 65.00 GiB, more than the limit of 64.00 GiB" train gpt --preset gpt-tiny --data big.tok --steps 1
  rm -f big.tok
fi
# a header that claims 2^62 tokens in a file of 28 bytes: refused before allocating
printf 'CARVETOK\001\000\000\000\000\001\000\000\377\377\377\377\377\377\377\077abcd' >liar.tok
expect 1 "liar.tok: token count does not match the file size" train gpt --preset gpt-tiny --data liar.tok --steps 1
# the worst text for the lexer and the parser, at the size limit
awk 'BEGIN { for (i = 0; i < 16384; i++) { for (j = 0; j < 1023; j++) printf "("; printf "\n" } }' >parens.graph
expect 1 "the model is too large: more than 8388608 tokens" check parens.graph
awk 'BEGIN { for (i = 0; i < 1600000; i++) print "x = a + b" }' >stmts.graph
expect 1 "the model is too large" check stmts.graph
# a long line is shown around the error, not whole
awk 'BEGIN { printf "x = a"; for (i = 0; i < 2000000; i++) printf " + a"; print "" }' >longline.graph
expect 1 "statement too long" check longline.graph
if [ "$(wc -c <out)" -gt 2000 ]; then
  fail=$((fail + 1))
  echo "FAILED: the message about a 8 MB line is $(wc -c <out) bytes"
else
  pass=$((pass + 1))
fi

# ----------------------------------------------------------------- plan files
expect 0 "wrote" plan gpt --set batch=16,seq=64,vocab=256,hidden=512,heads=8,layers=16 --cluster "$dir/clusters/fast-two-nodes.cluster" \
  --microbatches 8 -o good
expect 0 "4 stages" simulate good
# bad NAME SED-SCRIPT: a copy of the good plan, edited
bad() { sed "$2" good/plan.json >"$1.json"; }
line=$(grep -n '"predicted_step_s"' good/plan.json | cut -d: -f1)
bad nan 's/"predicted_step_s": [^,]*/"predicted_step_s": NaN/'
expect 1 "nan.json: not a carve plan: malformed JSON at line $line, column 23 (byte [0-9]*): expected a value" \
  simulate nan.json
bad inf 's/"predicted_step_s": [^,]*/"predicted_step_s": 1e999/'
expect 1 "inf.json: .*line $line, column 23.*: a number out of range" simulate inf.json
bad negative '0,/"sync_s": [^,]*/s//"sync_s": -1/'
expect 1 "negative.json: field 'stages\[0\].sync_s' is -1; it must be a number from 0 to 1e+09" simulate negative.json
bad huge '0,/"predicted_stage_s": [^,]*/s//"predicted_stage_s": 1e300/'
expect 1 "huge.json: field 'stages\[0\].predicted_stage_s' is 1e+300" compare good huge.json
bad fraction 's/"microbatches": 8/"microbatches": 2.5/'
expect 1 "fraction.json: field 'microbatches' is 2.5; it must be a whole number from 1 to 1024" simulate fraction.json
bad absurd 's/"microbatches": 8/"microbatches": 1e12/'
expect 1 "absurd.json: field 'microbatches' is 1000000000000" simulate absurd.json
bad devices 's/"devices": 4/"devices": -4/'
expect 1 "devices.json: field 'devices' is -4" compare devices.json good
bad chunks 's/"chunks_per_device": 1/"chunks_per_device": 4/'
expect 1 "chunks.json: field 'chunks_per_device' is 4; the zb-h1 schedule needs 1" simulate chunks.json
bad kind 's/"microbatches": 8/"microbatches": "8"/'
expect 1 "kind.json: field 'microbatches' is a string" simulate kind.json
bad sched 's/"zb-h1"/"zb-h2"/'
expect 1 "sched.json: field 'schedule' is 'zb-h2'; it must be one of: gpipe, 1f1b, interleaved, zb-h1" simulate sched.json
bad comm 's/"send-recv": [0-9]*/"send-recv": -5/'
expect 1 "comm.json: field 'communication_bytes_per_device.send-recv' is -5" compare good comm.json
awk 'BEGIN { printf "{\"format\": \"carve-plan\", \"version\": 1, \"predicted_step_s\": 1, \"stages\": [";
  for (i = 0; i < 5000; i++) printf "%s{\"predicted_stage_s\": 1}", i ? "," : ""; print "]}" }' >stages.json
expect 1 "stages.json: field 'stages' is an array of 5000; it must be an array of 1 to 4096 stages" simulate stages.json
awk 'BEGIN { for (i = 0; i < 100000; i++) printf "["; print "" }' >deep.json
expect 1 "deep.json: .*nested more than 64 deep" simulate deep.json
# a million short strings: each used to allocate the rest of the text
awk 'BEGIN { printf "["; for (i = 0; i < 1000000; i++) printf "%s\"ab\"", i ? "," : ""; print "]" }' >strings.json
expect 1 "strings.json: not a carve plan (no \"format\"" simulate strings.json
printf '{"format": "carve-plan", "version": 1}\000 trailing' >nul.json
expect 1 "nul.json: .*a NUL byte in the text" simulate nul.json
# a plan directory whose plan.json is bad: the run goes on, with a warning
expect 0 "wrote" plan gpt --preset gpt-tiny --cluster local --devices-per-node 1 --nodes 1 -o run1
sed 's/"predicted_step_s": [^,]*/"predicted_step_s": -3/' run1/plan.json >run1/edited && mv run1/edited run1/plan.json
expect 0 "warning: run1/plan.json: field 'predicted_step_s' is -3" run run1 --steps 2

# ------------------------------------------------ 100,000 statements, hashed
awk 'BEGIN { print "dim a = 4\ninput x[a]\nparam w[a] ~ ones\nt0 = x * w"
  for (i = 1; i < 100000; i++) printf "t%d = t%d + x\n", i, i - 1
  print "loss = sum(t99999, 0)" }' >wide.graph
start=$(date +%s)
expect 0 "add 99999 mul 1 sum 1" check wide.graph
echo "note: 100,000 statements checked in $(($(date +%s) - start)) s"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
