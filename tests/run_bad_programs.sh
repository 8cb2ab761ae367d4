#!/bin/sh
# run_bad_programs.sh CARVE DIR: program files that carry a valid checksum
# but describe something impossible (a layernorm whose output rows are wider
# than its input's, a shape whose element count overflows) must be refused
# with a message and exit status 1, never run. Prints "N passed, M failed".
set -u
carve=$1
dir=$2
pass=0
fail=0
for f in "$dir"/*.prog; do
  out=$("$carve" run "$f" --steps 1 2>&1)
  status=$?
  # refused for what it says, not for being another format version
  if [ "$status" -eq 1 ] && printf '%s' "$out" | grep -q "error" && ! printf '%s' "$out" | grep -q "program format"; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAILED: $f: status $status"
    printf '%s\n' "$out" | head -5
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
