#!/bin/sh
# bench_precision.sh [CARVE] [ROUNDS] [BASELINE_CARVE]: a gpt2-124m training
# step (AdamW) on this machine, one rank, all cores: carve in bf16 mixed
# precision against carve in fp32, against PyTorch (eager, the same model:
# bench/torch_gpt2.py) in bf16 autocast and in fp32, and, when
# BASELINE_CARVE is given (another carve build, e.g. an older release), that
# carve's fp32 step.
#
# Shapes: batch 4, seq 256 (the default), and batch 8, seq 1024 with
# SHAPES="4:256 8:1024". The contenders run in turn, ROUNDS rounds (default
# 3), each run 4 steps; a run's figure is its median step after the first,
# and the table shows each contender's median over the rounds and its
# tokens/s against carve fp32 in the same rounds. PyTorch is skipped when
# python3 cannot import torch (pip install torch).
set -eu
carve=${1:-build/carve}
rounds=${2:-3}
baseline=${3:-}
shapes=${SHAPES:-"4:256"}
threads=$(getconf _NPROCESSORS_ONLN)
here=$(dirname "$0")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=$threads
torch=no
python3 -c "import torch" 2>/dev/null && torch=yes

# median of the step times (ms) after the first, from carve's step lines
carve_ms() { grep '^step' "$1" | tail -n +2 | awk '{print $5}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
torch_ms() { sed -n 's/.*median \([0-9.]*\) ms\/step.*/\1/p' "$1"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "gpt2-124m training step (AdamW), one rank, $threads threads; $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
for shape in $shapes; do
  b=${shape%%:*}
  s=${shape#*:}
  model="gpt --preset gpt2-124m --set batch=$b,seq=$s"
  names="carve-bf16 carve-fp32"
  [ "$torch" = yes ] && names="$names torch-bf16 torch-fp32"
  [ -n "$baseline" ] && names="$names baseline-fp32"
  for r in $(seq "$rounds"); do
    for n in $names; do
      case $n in
      carve-*) $carve train $model --steps 4 --log-every 1 --precision "${n#carve-}" >"$tmp/$n.$r" 2>&1
        carve_ms "$tmp/$n.$r" >>"$tmp/$n" ;;
      torch-*) python3 "$here/torch_gpt2.py" --preset gpt2-124m --batch "$b" --seq "$s" --steps 4 \
        --precision "${n#torch-}" --threads "$threads" >"$tmp/$n.$r" 2>/dev/null
        torch_ms "$tmp/$n.$r" >>"$tmp/$n" ;;
      baseline-fp32) $baseline train $model --steps 4 --log-every 1 >"$tmp/$n.$r" 2>&1
        carve_ms "$tmp/$n.$r" >>"$tmp/$n" ;;
      esac
    done
  done
  ref=$(median <"$tmp/carve-fp32")
  tokens=$((b * s))
  echo
  echo "batch $b, seq $s ($tokens tokens/step), median of $rounds rounds"
  printf '%-16s %12s %10s %22s\n' "" "ms/step" "tok/s" "tok/s vs carve fp32"
  for n in $names; do
    m=$(median <"$tmp/$n")
    awk -v n="$n" -v m="$m" -v r="$ref" -v t=$tokens \
      'BEGIN { printf "%-16s %12.0f %10.0f %21.2fx\n", n, m, t / m * 1e3, r / m }'
  done
  rm -f "$tmp"/carve-* "$tmp"/torch-* "$tmp"/baseline-*
done
