#!/bin/sh
# check.sh: the one script run on a GPU machine (docs/gpu.md). It
# builds carve with CUDA for Hopper (sm_90) only, then measures, each stage
# under its own time limit (a stage that fails or hangs is recorded and the
# next one runs):
#   machine   nvidia-smi, nvcc, the compiler, glibc, where the libraries carve
#             links are found (oneDNN, GLPK, OpenMPI, cuBLASLt, NCCL)
#   deps      unpacks bench/gpu/debs/*.deb (from fetch-debs.sh) with dpkg -x
#             into a prefix (BUILD-deps, beside the build) when the machine
#             lacks carve's Debian libraries,
#             and points CMAKE_PREFIX_PATH, CPATH, LIBRARY_PATH and
#             LD_LIBRARY_PATH at it
#   build     cmake (CMAKE_CUDA_ARCHITECTURES=90) and make
#   ctest     ctest -R cuda_ : cuda_ops (every op on the GPU against the CPU),
#             its harness checks, cuda_train (gpt-tiny 50 steps and the
#             equivalence suite's one-rank plans, CUDA against CPU)
#   comm      the ranks' communication: NCCL on one rank (ctest
#             nccl_one_rank); the host-staged path (--comm host) with 2 and 4
#             MPI ranks sharing the one GPU, a subset of the equivalence
#             suite against the CPU (dp=2, tp=2, a 2-stage 1F1B pipeline,
#             ZeRO-3 on 4 ranks); --comm auto's fallback to host and
#             --comm nccl's refusal when two ranks share the GPU
#   gemm      bench/gpu/gemm: carve's einsums against cuBLASLt, GPT-2 124M
#             and GPT-3 175B shapes
#   step      a gpt2-124m training step, bf16, AdamW, batch 16 x seq 1024, one
#             GPU: tokens/s and MFU (model FLOPs over the H200's 989 TFLOP/s
#             dense bf16), and measured / predicted for the plan `carve plan`
#             makes for one H200 (bench/gpu/h200.cluster)
#   torch     PyTorch eager training the same model (bench/torch_gpt2.py
#             --device cuda), explicit attention as carve computes it and SDPA
#   memcheck  compute-sanitizer --tool memcheck over one gpt-tiny step
# Everything lands in $OUT: summary.txt (every figure and each stage's
# status and seconds), machine.txt, ctest.log, comm.log, gemm.log, step.log,
# torch.log, memcheck.log, and logs.tar.gz (all raw logs, the build's too).
#
# usage: OUT=DIR sh bench/gpu/check.sh        (on the GPU machine; about 6
#        minutes, at most 8)
#        CARVE_GPU_DRYRUN=1 OUT=DIR sh bench/gpu/check.sh
# The dry run does every part that needs no GPU, on any machine: the deps
# stage always unpacks debs/ when present (to prove it), the GPU tests
# report Skipped, and the GPU stages run only as far as their argument
# handling and their "no GPU" exits. BUILD=DIR chooses the build folder
# (default build-gpu in the repository); STEPS the timed steps (default 8);
# BUDGET the seconds the whole script may take (default 450: every stage's
# limit is cut to what is left).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dry=${CARVE_GPU_DRYRUN:-0}
OUT=${OUT:-}
if [ -z "$OUT" ]; then
  echo "check.sh: set OUT to the folder for the results" >&2
  exit 2
fi
mkdir -p "$OUT"
build=${BUILD:-$root/build-gpu}
steps=${STEPS:-8}
work=$(mktemp -d)
logs=$work/logs
mkdir -p "$logs"
summary=$OUT/summary.txt
t_start=$(date +%s)
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
jobs=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 4)

# the whole script ends within BUDGET seconds (default 450): each stage's
# limit is cut to what is left, and a stage is not started with under 15 s
deadline=$((t_start + ${BUDGET:-450}))

# stage NAME SECONDS COMMAND...: runs COMMAND (a shell string) with its own
# time limit, output to $logs/NAME.log; records status and seconds
stage() {
  name=$1
  limit=$2
  shift 2
  t0=$(date +%s)
  left=$((deadline - t0))
  if [ "$left" -lt 15 ]; then
    say "stage $name: NOT RUN (the ${BUDGET:-450}s budget is spent)"
    return 1
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  timeout -k 10 "$limit" sh -c "$*" >"$logs/$name.log" 2>&1
  rc=$?
  dt=$(($(date +%s) - t0))
  case $rc in
  0) st=ok ;;
  77) st=skipped ;;
  124 | 137) st="TIMED OUT after ${limit}s" ;;
  *) st="FAILED (exit $rc)" ;;
  esac
  say "stage $name: $st, ${dt}s"
  tar -C "$work" -czf "$OUT/logs.tar.gz" logs 2>/dev/null # what is done so far comes back even if a later stage is killed
  return $rc
}

say "carve GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$([ "$dry" = 1 ] && echo ', DRY RUN')"

# ---------------------------------------------------------------- machine
stage machine 30 "
  nvidia-smi || echo 'nvidia-smi: not here'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  nvcc --version || echo 'nvcc: not on PATH'
  cmake --version | head -1; cc --version | head -1; ldd --version | head -1
  cat /etc/os-release 2>/dev/null | head -2
  python3 -c 'import torch; print(\"torch\", torch.__version__, torch.version.cuda)' 2>&1 | tail -1
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo 'compute-sanitizer: not found'
  echo '--- ldconfig'
  ldconfig -p | grep -E 'libdnnl|libglpk|libmpi\.|libopenblas|libcublasLt|libnccl|libcudart' || echo '(none of them)'
"
cp "$logs/machine.log" "$OUT/machine.txt"
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
say "gpu: ${gpu:-none}"

# ---------------------------------------------------------------- deps
# the pip wheels' CUDA libraries (cuBLASLt, NCCL) where the toolkit has none on the loader's path
for d in $(python3 -c 'import nvidia, os; [print(os.path.join(p, s, "lib")) for p in nvidia.__path__ for s in os.listdir(p)]' 2>/dev/null); do
  [ -d "$d" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
cmake_deps=""
need_debs=no
for lib in libdnnl.so.2 libglpk.so.40 libmpi.so.40; do
  ldconfig -p | grep -q "$lib" || need_debs=yes
done
[ "$dry" = 1 ] && need_debs=yes # prove the unpacking here
if [ "$need_debs" = yes ]; then
  prefix=$build-deps # beside the build, at a path that stays: its cache names it
  rm -rf "$prefix"
  if ls "$here"/debs/*.deb >/dev/null 2>&1; then
    stage deps 60 "for f in '$here'/debs/*.deb; do dpkg -x \"\$f\" '$prefix' || exit 1; done; ls -R '$prefix/usr/include' | head -5"
    lib=$prefix/usr/lib/x86_64-linux-gnu
    export CMAKE_PREFIX_PATH=$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    export CPATH=$prefix/usr/include:$lib/openmpi/include${CPATH:+:$CPATH}
    export LIBRARY_PATH=$lib:$lib/openmpi/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
    export LD_LIBRARY_PATH=$lib:$lib/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # FindMPI without the mpicc wrapper (its paths point into /usr)
    cmake_deps="-DMPI_SKIP_COMPILER_WRAPPER=ON -DMPI_C_HEADER_DIR=$lib/openmpi/include -DMPI_C_LIB_NAMES=mpi"
    cmake_deps="$cmake_deps -DMPI_mpi_LIBRARY=$lib/openmpi/lib/libmpi.so"
  else
    say "stage deps: FAILED: carve's libraries are missing here and bench/gpu/debs/ is empty (run bench/gpu/fetch-debs.sh first)"
  fi
else
  say "stage deps: not needed (oneDNN, GLPK and OpenMPI are installed)"
fi

# ---------------------------------------------------------------- build
stage configure 120 "cmake -S '$root' -B '$build' -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 $cmake_deps"
grep -E 'carve: (CUDA|oneDNN|GLPK|no CUDA)|MPI' "$logs/configure.log" | sed 's/^/  /' | tee -a "$summary"
stage build 300 "cmake --build '$build' -j$jobs"
carve=$build/carve
if [ ! -x "$carve" ]; then
  say "no carve binary: the stages that need it are left out"
  tail -20 "$logs/build.log"
fi

# ---------------------------------------------------------------- tests
# cuda_train's one-rank plans: two layouts of the four (microbatches with
# recompute covers both) to fit the time
stage ctest 240 "cd '$build' && LAYOUTS='- mb=2,recompute=selective' ctest -R cuda_ --output-on-failure -V --timeout 200"
cp "$logs/ctest.log" "$OUT/ctest.log"
grep -E 'tests passed|tests failed|Skipped|\*\*\*Failed|Passed|Timeout' "$logs/ctest.log" | grep -E '^[0-9 /]*Test|tests' | sed 's/^/  /' | tee -a "$summary"
# cuda_ops's table (the dry run shows the harness's, whose CPU stands in for the GPU)
which='test_cuda$' label=cuda_ops
[ "$dry" = 1 ] && which='test_cuda "--against" "cpu"$' label="cuda_ops_harness, the CPU in the GPU's place"
n=$(sed -n "s/^\([0-9]*\): Test command: .*$which/\1/p" "$logs/ctest.log" | head -1)
if [ -n "$n" ]; then
  grep "^$n: " "$logs/ctest.log" | sed "s/^$n: //" | sed -n '/^op  *instrs/,/passed, .* failed/p' >"$work/ops.txt"
  if [ -s "$work/ops.txt" ]; then
    say "per-op largest |gpu - cpu| / largest |cpu| ($label):"
    sed 's/^/  /' "$work/ops.txt" | tee -a "$summary"
  fi
fi
grep -E '^[0-9]*: (gpt-tiny|mlp|gpt|bert|moe) ' "$logs/ctest.log" | sed 's/^[0-9]*: /  cuda_train: /' | tee -a "$summary"

# ---------------------------------------------------------------- comm
# skipped (77) where no GPU answers: nccl_one_rank reports Skipped, and the
# probe stops the rest
stage comm 90 "
  . '$root/tests/mpi.sh'
  cd '$build' && ctest -R 'nccl_one_rank\$' --output-on-failure -V --timeout 60 || exit 1
  '$build/tests/test_cuda' --probe || exit \$?
  BACKEND=cuda COMM=host LOSS_TOL=1e-4 sh '$root/tests/test_ranks.sh' '$carve' '$build/tests/param_compare' gpt:gpt-tiny \
    'dp=2 tp=2 pp=2,mb=4,schedule=1f1b dp=4,zero=3' no || exit 1
  '$carve' compile gpt --preset gpt-tiny --layout dp=2 -o '$work/dp2' >/dev/null || exit 1
  \$mpirun -np 2 '$carve' run '$work/dp2' --steps 2 --backend cuda >'$work/auto.log' 2>&1
  cat '$work/auto.log'
  grep -q 'not NCCL: ranks 0 and 1 share one GPU' '$work/auto.log' || { echo 'FAILED: --comm auto on a shared GPU'; exit 1; }
  \$mpirun -np 2 '$carve' run '$work/dp2' --steps 2 --backend cuda --comm nccl >'$work/nccl.log' 2>&1
  cat '$work/nccl.log'
  grep -q 'error: .*share one GPU' '$work/nccl.log' || { echo 'FAILED: --comm nccl on a shared GPU'; exit 1; }
  echo 'comm: all passed'
"
cp "$logs/comm.log" "$OUT/comm.log"
grep -E 'nccl_one_rank|gpt-tiny|passed, .* failed|FAILED|SKIPPED|comm: all' "$logs/comm.log" | grep -v '^[0-9]*: Test command' |
  sed 's/^/  /' | tee -a "$summary"

# ---------------------------------------------------------------- gemm
stage gemm 150 "'$build/bench/gpu/gemm' --reps 9"
cp "$logs/gemm.log" "$OUT/gemm.log"
grep -E 'all of the above|^GPT|SKIPPED|not in this build' "$logs/gemm.log" | sed 's/^/  /' | tee -a "$summary"

# ---------------------------------------------------------------- step
# the plan carve makes for one H200, run on the GPU: step lines, the
# prediction, and the step's model FLOPs
model="gpt --preset gpt2-124m --set batch=16"
stage step 200 "'$carve' plan $model --cluster '$here/h200.cluster' --manual dp=1 --precision bf16 -o '$work/plan' &&
  '$carve' run '$work/plan' --backend cuda --steps $((steps + 2)) --log-every 1"
cp "$logs/step.log" "$OUT/step.log"
# median over the steps after the first two (warm-up): ms, tok/s, GFLOP/s
med() { grep '^step' "$logs/step.log" | tail -n +3 | awk -v c="$1" '{print $c}' | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
ms=$(med 5)
tok=$(med 7)
gf=$(med 9)
if [ -n "$ms" ]; then
  awk -v ms="$ms" -v tok="$tok" -v gf="$gf" 'BEGIN {
    printf "  carve gpt2-124m bf16 AdamW, batch 16 x 1024: %.1f ms/step, %.0f tok/s, %.1f TFLOP/s, MFU %.1f%% of 989 TFLOP/s\n",
      ms, tok, gf / 1e3, gf / 1e3 / 989 * 100 }' | tee -a "$summary"
else
  say "  carve gpt2-124m step: no step ran ($(grep -m1 'error' "$logs/step.log"))"
fi
grep -E 'measured / predicted' "$logs/step.log" | sed 's/^/  /' | tee -a "$summary"
pred=$(grep -o '"predicted_step_s": [0-9.e+-]*' "$work/plan/plan.json" 2>/dev/null | awk '{printf "%.1f", $2 * 1e3}')
[ -n "$pred" ] && say "  predicted step on one H200 (bench/gpu/h200.cluster): $pred ms"

# ---------------------------------------------------------------- torch
stage torch 180 "
  python3 '$root/bench/torch_gpt2.py' --device cuda --preset gpt2-124m --batch 16 --seq 1024 --steps $((steps + 2)) --precision bf16 &&
  python3 '$root/bench/torch_gpt2.py' --device cuda --preset gpt2-124m --batch 16 --seq 1024 --steps $((steps + 2)) --precision bf16 --sdpa"
cp "$logs/torch.log" "$OUT/torch.log"
grep -E '^torch|SKIPPED' "$logs/torch.log" | sed 's/^/  /' | tee -a "$summary"
tms=$(sed -n 's/^torch bf16 .*median \([0-9.]*\) ms.*/\1/p' "$logs/torch.log" | head -1)
[ -n "$ms" ] && [ -n "$tms" ] &&
  awk -v c="$ms" -v t="$tms" 'BEGIN { printf "  carve against PyTorch eager (explicit attention): %.2fx the tokens/s\n", t / c }' |
  tee -a "$summary"

# ---------------------------------------------------------------- memcheck
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$san" ]; then
  stage memcheck 150 "'$san' --tool memcheck --error-exitcode 9 '$carve' train gpt --preset gpt-tiny --steps 1 --backend cuda"
  grep -E 'ERROR SUMMARY|error' "$logs/memcheck.log" | head -5 | sed 's/^/  /' | tee -a "$summary"
else
  say "stage memcheck: skipped (no compute-sanitizer here)"
  # the dry run: the command memcheck would watch, which must stop at once with "no usable GPU"
  [ "$dry" = 1 ] && stage memcheck-command 60 "'$carve' train gpt --preset gpt-tiny --steps 1 --backend cuda"
  [ -f "$logs/memcheck-command.log" ] && tail -1 "$logs/memcheck-command.log" | sed 's/^/  /' | tee -a "$summary"
fi
for f in memcheck memcheck-command; do [ -f "$logs/$f.log" ] && cp "$logs/$f.log" "$OUT/memcheck.log"; done

say "total: $(($(date +%s) - t_start))s"
cp "$summary" "$logs/summary.txt"
tar -C "$work" -czf "$OUT/logs.tar.gz" logs
rm -rf "$work"
