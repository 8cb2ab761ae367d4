# tally.sh: sourced by the shell tests that count checks. It makes a
# temporary folder ($tmp, removed on exit) and keeps the count: `ok` for a
# check that passed, `bad WHAT...` for one that failed (printed as
# "FAILED: WHAT..."), and `tally` at the end, which prints "N passed, M
# failed" and fails when any check did.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() {
  fail=$((fail + 1))
  echo "FAILED: $*"
}
tally() {
  echo "$pass passed, $fail failed"
  [ "$fail" -eq 0 ]
}
