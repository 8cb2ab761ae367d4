#!/bin/sh
# fetch-debs.sh: downloads the Debian packages carve's build links (oneDNN,
# GLPK, OpenMPI and the libraries they load; their -dev packages for the
# headers) into bench/gpu/debs/ (git-ignored), for a GPU machine whose image
# lacks them: bench/gpu/check.sh unpacks them there with dpkg -x into a
# prefix of its own. Run it on a Debian machine with the same release as the
# one carve is developed on (the libraries must match the build's), before
# taking the folder to the GPU machine. Prints what it fetched and the total
# size (what travels with the working tree).
#
# usage: sh bench/gpu/fetch-debs.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
debs=$here/debs
# runtime libraries of build/carve outside the C/C++ runtime (ldd), and the
# headers the build needs
pkgs="libdnnl2 libdnnl-dev
libglpk40 libglpk-dev libamd2 libcolamd2 libsuitesparseconfig5 libgmp10 libltdl7
libopenmpi3 libopenmpi-dev libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7
ocl-icd-libopencl1"
mkdir -p "$debs"
cd "$debs"
rm -f ./*.deb
# shellcheck disable=SC2086
apt-get download $pkgs
ls -l ./*.deb | awk '{ printf "%10d  %s\n", $5, $9; total += $5 } END { printf "%10d  total (%.1f MiB)\n", total, total / 1048576 }'
