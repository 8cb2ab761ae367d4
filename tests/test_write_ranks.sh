#!/bin/sh
# test_write_ranks.sh CARVE: rank programs are written one at a time as they
# are made (codegen_ranks hands each to a writer and frees it before the
# next); what is written must still be every rank's whole program.
#
# For each layout below, `carve compile --layout` writes DIR/rank0.prog ..
# rank(N-1).prog: each must read back (`carve explain --rank r`: checksum,
# every id and shape checked) and say it is rank r of N, and compiling the
# same layout again must give the same bytes. A smaller layout into the same
# DIR removes the larger one's extra ranks. A rank that cannot be written
# stops the writing with a message and exit status 1. Prints "N passed, M
# failed".
set -u
carve=$1
. "$(dirname "$0")/tally.sh"
# check DIR WORLD: every rank's program reads back as that rank
check() {
  r=0
  while [ "$r" -lt "$2" ]; do
    if ! "$carve" explain "$1" --rank "$r" >"$tmp/explain" 2>&1; then
      bad "explain $1 --rank $r: $(head -2 "$tmp/explain")"
      return
    fi
    if ! grep -q "rank $r world $2\$" "$1/rank$r.prog"; then
      bad "$1/rank$r.prog does not say rank $r world $2"
      return
    fi
    r=$((r + 1))
  done
  [ -e "$1/rank$2.prog" ] && bad "$1 has a rank$2.prog beyond its $2 ranks" && return
  ok
}
n=0
for spec in "gpt-small 8 dp=2,tp=2,pp=2,mb=2,schedule=zb-h1,recompute=full,zero=3" \
  "gpt-small 4 dp=2,pp=2,mb=4,schedule=interleaved,zero=2" \
  "gpt-small 3 dp=1:2,pp=2,mb=2,recompute=selective" \
  "gpt-tiny 4 tp=4,zero=1"; do
  set -- $spec
  n=$((n + 1))
  d=$tmp/l$n
  if ! "$carve" compile gpt --preset "$1" --layout "$3" -o "$d" >"$tmp/out" 2>&1; then
    bad "compile --layout $3: $(head -2 "$tmp/out")"
    continue
  fi
  check "$d" "$2"
  "$carve" compile gpt --preset "$1" --layout "$3" -o "$d.again" >/dev/null 2>&1
  if diff -r "$d" "$d.again" >/dev/null; then ok; else bad "compile --layout $3 twice: different programs"; fi
done
# programs of about 400 KB: each is written in several chunks, its checksum
# running on across them
if "$carve" compile gpt --preset gpt-small --set batch=32 --layout pp=2,mb=32 -o "$tmp/big" >"$tmp/out" 2>&1; then
  check "$tmp/big" 2
else
  bad "compile --layout pp=2,mb=32: $(head -2 "$tmp/out")"
fi
# a smaller layout into the 8-rank directory: ranks 4-7 go
"$carve" compile gpt --preset gpt-small --layout dp=4 -o "$tmp/l1" >/dev/null 2>&1
check "$tmp/l1" 4
# rank 2 cannot be written (its path is a directory): stop, say so, exit 1
mkdir -p "$tmp/stuck/rank2.prog"
"$carve" compile gpt --preset gpt-tiny --layout dp=4 -o "$tmp/stuck" >"$tmp/out" 2>&1
st=$?
if [ "$st" -eq 1 ] && grep -q "cannot write program.*rank2.prog" "$tmp/out" && [ ! -e "$tmp/stuck/rank3.prog" ]; then
  ok
else
  bad "an unwritable rank 2: status $st, $(head -2 "$tmp/out")"
fi
# a whole plan's programs from carve plan -o, on 4 devices of the shipped dgx-a100
if "$carve" plan gpt --preset gpt-small --cluster dgx-a100 --nodes 1 --devices-per-node 4 \
  --manual dp=2,tp=2,pp=1 -o "$tmp/plan" >"$tmp/out" 2>&1; then
  check "$tmp/plan" 4
else
  bad "plan --manual dp=2,tp=2 -o: $(head -2 "$tmp/out")"
fi
tally
