#!/bin/sh
# test_ranks_bad.sh CARVE PROG_RESIGN: a distributed run that cannot start, or loses a
# rank, stops every rank with a message that says what and where, and a
# non-zero exit; never a hang. Prints "N passed, M failed".
set -u
carve=$1
resign=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/mpi.sh"
pass=0
fail=0
# expect NAME PATTERN COMMAND...: non-zero exit within 60 s, PATTERN in the output
expect() {
  name=$1
  pattern=$2
  shift 2
  timeout 60 "$@" >"$tmp/out" 2>&1
  got=$?
  if [ "$got" -ne 0 ] && [ "$got" -ne 124 ] && grep -q -- "$pattern" "$tmp/out"; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAILED: $name: status $got, output:"
    sed 's/^/  | /' "$tmp/out" | head -10
  fi
}
"$carve" compile gpt --preset gpt-tiny --layout "pp=2,mb=2" -o "$tmp/p" >/dev/null || { echo "FAILED: compile"; exit 1; }
expect "too many ranks" "plan for 2 ranks, but this run has 3" $mpirun -np 3 "$carve" run "$tmp/p" --steps 1
expect "too few ranks" "plan for 2 ranks, but this run has 1" $mpirun -np 1 "$carve" run "$tmp/p" --steps 1
expect "no launcher" "plan for 2 ranks, but this run has 1" "$carve" run "$tmp/p" --steps 1

cp -r "$tmp/p" "$tmp/missing" && rm "$tmp/missing/rank1.prog"
expect "missing program" "rank1.prog" $mpirun -np 2 "$carve" run "$tmp/missing" --steps 1

cp -r "$tmp/p" "$tmp/corrupt" && sed -i '20s/[0-9]/x/' "$tmp/corrupt/rank1.prog"
expect "corrupted program" "checksum mismatch" $mpirun -np 2 "$carve" run "$tmp/corrupt" --steps 1

cp -r "$tmp/p" "$tmp/version" && sed -i '2s/.*/carve 0.0.1/' "$tmp/version/rank0.prog" && "$resign" "$tmp/version/rank0.prog"
expect "other carve version" "written by carve 0.0.1" $mpirun -np 2 "$carve" run "$tmp/version" --steps 1

cp -r "$tmp/p" "$tmp/swapped" && mv "$tmp/swapped/rank0.prog" "$tmp/x" && mv "$tmp/swapped/rank1.prog" \
  "$tmp/swapped/rank0.prog" && mv "$tmp/x" "$tmp/swapped/rank1.prog"
expect "programs swapped" "was given the program of rank" $mpirun -np 2 "$carve" run "$tmp/swapped" --steps 1

# rank 1's program from another plan (two compiles into one folder): refused
# by the plan ids before the first step
"$carve" compile gpt --preset gpt-tiny --layout tp=2 -o "$tmp/tpa" >/dev/null
"$carve" compile gpt --preset gpt-tiny --set hidden=64 --layout tp=2 -o "$tmp/tpb" >/dev/null
cp -r "$tmp/tpa" "$tmp/mixed" && cp "$tmp/tpb/rank1.prog" "$tmp/mixed/rank1.prog"
expect "programs of two plans" "folder mixes two compiles" $mpirun -np 2 "$carve" run "$tmp/mixed" --steps 1
# the same with the plan id forged to match: the collectives, which move other
# sizes, are still refused (MPI would otherwise write past a buffer)
sed -i "s/^plan .*/$(grep '^plan ' "$tmp/tpa/rank0.prog")/" "$tmp/mixed/rank1.prog" && "$resign" "$tmp/mixed/rank1.prog"
expect "collectives of two plans" "run different collectives" $mpirun -np 2 "$carve" run "$tmp/mixed" --steps 1

printf 'some text for a token file, long enough to make a few batches of it. %.0s' $(seq 200) >"$tmp/text"
"$carve" data "$tmp/text" -o "$tmp/text.tok" >/dev/null 2>&1
"$carve" compile gpt --preset gpt-tiny --set vocab=64 --layout dp=2 -o "$tmp/small" >/dev/null
expect "data vocabulary" "vocabulary" $mpirun -np 2 "$carve" run "$tmp/small" --steps 1 --data "$tmp/text.tok"

# signal_rank NAME SIGNAL LIMIT PATTERN [RUN OPTIONS...]: a long 2-rank run,
# one rank sent SIGNAL a second after it starts; the job must end within
# LIMIT seconds, non-zero, with PATTERN in its output
signal_rank() {
  name=$1 sig=$2 limit=$3 pattern=$4
  shift 4
  $mpirun -np 2 "$carve" run "$tmp/long" --steps 1000000 --quiet "$@" >"$tmp/signalled" 2>&1 &
  job=$!
  victim=""
  for _ in $(seq 100); do
    victim=$(pgrep -f "^$carve run $tmp/long" | tail -1)
    [ -n "$victim" ] && break
    sleep 0.1
  done
  sleep 1
  kill "-$sig" "$victim" 2>/dev/null
  waited=0
  while kill -0 $job 2>/dev/null && [ $waited -lt "$limit" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 $job 2>/dev/null; then
    kill -9 $job "$victim" 2>/dev/null
    echo "FAILED: $name: the job was still running $limit s after SIG$sig"
    fail=$((fail + 1))
  else
    wait $job
    status=$?
    if [ -n "$victim" ] && [ $status -ne 0 ] && grep -q "$pattern" "$tmp/signalled"; then
      pass=$((pass + 1))
    else
      echo "FAILED: $name: status $status, output:"
      sed 's/^/  | /' "$tmp/signalled" | head -10
      fail=$((fail + 1))
    fi
  fi
  kill -9 "$victim" 2>/dev/null
}
"$carve" compile gpt --preset gpt-tiny --layout "pp=2,mb=2" -o "$tmp/long" >/dev/null
# a rank killed mid-run: the job ends within seconds, naming the rank
signal_rank "killed rank" KILL 30 "rank [0-9]"
# a rank that stops answering (SIGSTOP): the others meet --comm-timeout and
# the job ends within seconds of it, naming the step (and the instruction, or
# the end-of-step agreement, where the stop caught it) and whom it waited for
signal_rank "stopped rank" STOP 20 \
  "rank [01], .*step [0-9]*.*: no answer from \(rank [01]\|the other ranks\|the members of group\)" --comm-timeout 3

# a receive whose send never comes (rank 0's first send retagged): ended at
# the deadline with the receive and the silent peer named
cp -r "$tmp/p" "$tmp/nosend"
first=$(grep -n '^send ' "$tmp/nosend/rank0.prog" | head -1 | cut -d: -f1)
sed -i "${first}s/tag=[0-9]*/tag=99999/" "$tmp/nosend/rank0.prog" && "$resign" "$tmp/nosend/rank0.prog"
expect "receive without a send" "instruction [0-9]* (recv): no answer from rank 0" \
  $mpirun -np 2 "$carve" run "$tmp/nosend" --steps 2 --comm-timeout 2

# a trace of the last step: one track per rank, compute and communication
if $mpirun -np 2 "$carve" run "$tmp/p" --steps 2 --quiet --trace "$tmp/trace.json" >"$tmp/out" 2>&1 &&
  grep -q '"tid":0,' "$tmp/trace.json" && grep -q '"tid":1,' "$tmp/trace.json" &&
  grep -q '"cat":"communication"' "$tmp/trace.json" && tail -1 "$tmp/trace.json" | grep -q '}$'; then
  pass=$((pass + 1))
else
  echo "FAILED: --trace"
  sed 's/^/  | /' "$tmp/out" | head -5
  fail=$((fail + 1))
fi
# a trace onto something that is not a regular file (a FIFO here; /dev/null
# run as root) is refused, and the file is left as it was
mkfifo "$tmp/fifo"
expect "trace onto a fifo" "cannot write the trace.*File exists" $mpirun -np 2 "$carve" run "$tmp/p" --steps 1 --quiet \
  --trace "$tmp/fifo"
[ -p "$tmp/fifo" ] && [ ! -e "$tmp/fifo.tmp" ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAILED: the fifo was replaced"; }
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
