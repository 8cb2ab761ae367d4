#!/bin/sh
# run_bad.sh: the bad-input corpus of the graph language.
#
# usage: sh run_bad.sh CARVE_BINARY DIR
#
# For every DIR/NAME.graph this runs
#     CARVE_BINARY check PARENT_NAME/NAME.graph [ARGS]
# where ARGS is the one line of DIR/NAME.args, if that file exists (split on
# blanks, no quoting: e.g. "--set nosuch=3" or "--preset nope"). The run must
# exit with status 1 and its stderr must equal DIR/NAME.err byte for byte;
# on a mismatch the unified diff (expected, then actual) is printed.
#
# Path convention: messages carry the model path as given on the command
# line, so the script cd's into DIR's parent and names each file relative to
# it, as "bad/NAME.graph" for DIR = tests/bad. The .err files therefore read
# "bad/NAME.graph:LINE:COL: error: ...". The script works from any working
# directory; CARVE_BINARY and DIR may be relative or absolute.
#
# To regenerate the expected files after a deliberate change to a message:
#     CARVE_BAD_UPDATE=1 sh tests/run_bad.sh build/carve tests/bad
# then read every changed .err (git diff) before committing it.
#
# The last line of output is always "N passed, M failed"; the exit status is
# nonzero when any case failed.

if [ $# -ne 2 ]; then
  echo "usage: sh run_bad.sh CARVE_BINARY DIR" >&2
  exit 2
fi

case $1 in
  /*) carve=$1 ;;
  *) carve=$(pwd)/$1 ;;
esac
if [ ! -x "$carve" ]; then
  echo "run_bad.sh: '$1' is not an executable" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
if [ ! -d "$2" ]; then
  echo "run_bad.sh: '$2' is not a directory" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
dir=$(cd "$2" && pwd) || exit 2
parent=$(dirname "$dir")
base=$(basename "$dir")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/carve-bad.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# A case that hangs must not hang the suite; timeout(1) is used where present.
if command -v timeout >/dev/null 2>&1; then
  limit="timeout 10"
else
  limit=""
fi

cd "$parent" || exit 2
pass=0
fail=0
set -- "$base"/*.graph
set -f # from here on, the .args words are not globbed
for graph in "$@"; do
  [ -e "$graph" ] || continue
  name=${graph%.graph}
  args=""
  if [ -f "$name.args" ]; then
    IFS= read -r args <"$name.args" || [ -n "$args" ] || args=""
  fi
  # shellcheck disable=SC2086 # word splitting of $args and $limit is wanted
  $limit "$carve" check "$graph" $args >"$tmp/stdout" 2>"$tmp/stderr"
  status=$?
  if [ -n "$CARVE_BAD_UPDATE" ]; then
    cp "$tmp/stderr" "$name.err"
  fi
  problem=""
  if [ "$status" -ne 1 ]; then
    problem="exit status $status, expected 1"
  fi
  if [ ! -f "$name.err" ]; then
    problem="${problem:+$problem; }missing $name.err"
  elif ! cmp -s "$name.err" "$tmp/stderr"; then
    problem="${problem:+$problem; }stderr differs from $name.err"
  fi
  if [ -z "$problem" ]; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAIL $graph${args:+ $args}: $problem"
    if [ -f "$name.err" ]; then
      diff -u "$name.err" "$tmp/stderr" | sed "s|$tmp/stderr|actual stderr|"
    else
      sed 's/^/  | /' "$tmp/stderr"
    fi
  fi
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
