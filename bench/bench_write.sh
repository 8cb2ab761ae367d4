#!/bin/sh
# bench_write.sh CARVE [DIR] [ROWS]: how long writing a big plan's rank
# programs takes, and the most memory it holds.
#
# Plans Megatron-LM Table 1 rows (GPT, V = 51200, s = 2048, DGX A100 nodes of
# 8) with `carve plan --manual` and writes every rank's program with -o
# into DIR (default: a temporary directory; each plan's files are removed
# after it is measured, as the biggest is about 16 GB). For each: wall time
# and peak resident memory (/usr/bin/time), ranks and bytes written.
# ROWS picks cases by name (default: all):
#   18b-auto   18.4B, 256 ranks, dp=32,tp=8,pp=1 (microbatches chosen: 2)
#   18b        18.4B, 256 ranks, Megatron's plan: 32 microbatches, full recompute
#   145b       145.6B, 1536 ranks, dp=24,tp=8,pp=8, 96 microbatches, full recompute
set -u
carve=$1
dir=${2:-}
rows=${3:-"18b-auto 18b 145b"}
[ -x /usr/bin/time ] || { echo "bench_write.sh: needs /usr/bin/time (apt-get install time)"; exit 1; }
if [ -z "$dir" ]; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
fi
mkdir -p "$dir" || exit 1
# case NAME SETS NODES MANUAL
case_() {
  out=$dir/$1
  rm -rf "$out"
  /usr/bin/time -f "%e %M" -o "$dir/time" "$carve" plan gpt --set "$2" --cluster dgx-a100 --nodes "$3" \
    --manual "$4" -o "$out" >"$dir/log" 2>&1
  st=$?
  set -- "$1" "$4" $(cat "$dir/time" | tail -1)
  ranks=$(ls "$out" 2>/dev/null | grep -c 'prog$')
  mb=$(du -sm "$out" 2>/dev/null | cut -f1)
  printf "%-9s %-45s %6s %9s s %9s MiB %8s MiB %s\n" "$1" "$2" "$ranks" "$3" $(($4 / 1024)) "$mb" \
    "$([ $st -eq 0 ] || echo "status $st: $(tail -1 "$dir/log")")"
  rm -rf "$out"
}
printf "%-9s %-45s %6s %11s %13s %12s\n" case plan ranks wall "peak RSS" written
for r in $rows; do
  case $r in
  18b-auto) case_ 18b-auto batch=1024,seq=2048,vocab=51200,hidden=6144,heads=48,layers=40 32 dp=32,tp=8,pp=1 ;;
  18b) case_ 18b batch=1024,seq=2048,vocab=51200,hidden=6144,heads=48,layers=40 32 \
    dp=32,tp=8,pp=1,mb=32,recompute=full ;;
  145b) case_ 145b batch=2304,seq=2048,vocab=51200,hidden=12288,heads=96,layers=80 192 \
    dp=24,tp=8,pp=8,mb=96,recompute=full ;;
  *) echo "bench_write.sh: no case $r" ;;
  esac
done
