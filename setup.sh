#!/bin/sh
# setup.sh: install what is missing, build, and run carve's main job or tests.
#
#   ./setup.sh        install + build, then plan a small GPT for this CPU as 2
#                     ranks and train the plan under mpirun
#   ./setup.sh test   install + build (also a sanitizer build), then run every test
#   ./setup.sh build  install + build only
#
# Idempotent: packages already present are not reinstalled, builds are
# incremental, so a second run starts working at once.
set -eu
cd "$(dirname "$0")"
mode=${1:-run}
case $mode in run|test|build) ;; *) echo "usage: ./setup.sh [run|test|build]" >&2; exit 2 ;; esac

# Debian packages carve builds and runs with.
pkgs="build-essential cmake libdnnl-dev libglpk-dev libopenmpi-dev openmpi-bin base-files"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
build() { # build DIR [cmake options...]
  dir=$1
  shift
  [ -f "$dir/CMakeCache.txt" ] || cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$dir" -j "$jobs" >/dev/null
}
echo "setup: building"
build build

case $mode in
build) echo "setup: built build/carve" ;;
run)
  # measure this machine as 2 ranks, plan a small GPT for it, train the plan
  # under mpirun on real text
  . tests/mpi.sh
  mpirun="$mpirun -np 2"
  [ -f build/licenses.tok ] || build/carve data /usr/share/common-licenses/* -o build/licenses.tok
  [ -f build/profiled.cluster ] || $mpirun build/carve profile --quick -o build/profiled.cluster >/dev/null
  build/carve plan gpt --preset gpt-tiny --cluster build/profiled.cluster -o build/plan
  $mpirun build/carve run build/plan --data build/licenses.tok --steps 300 --log-every 25
  ;;
test)
  build build-asan -DCARVE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
  echo "setup: tests (release build)"
  (cd build && ctest --output-on-failure -j "$jobs")
  echo "setup: tests (AddressSanitizer + UndefinedBehaviorSanitizer build)"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure -j "$jobs" -LE slow)
  ;;
esac
