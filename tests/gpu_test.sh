# gpu_test.sh: sourced by the tests that run a device against the CPU
# (test_cuda_train.sh, test_nccl.sh), with $probe (test_cuda) and $dut
# (the backend under test) set. It asks `$probe --probe --against $dut`
# first: where that backend does not open (no driver, no device) the test
# prints "SKIPPED: why" and exits 77 before anything runs, so it never
# passes without having run. Then tally.sh, and the loss comparison:
#   losses LOG            the step losses a run printed, one a line
#   same_losses A B TOL N N losses in both logs, each within TOL relative;
#                         prints the worst difference
msg=$("$probe" --probe --against "$dut" 2>&1)
case $? in
0) echo "$msg" ;;
77)
  echo "$msg"
  exit 77
  ;;
*)
  echo "FAILED: $probe --probe: $msg"
  exit 1
  ;;
esac
. "$(dirname "$0")/tally.sh"

losses() { grep '^step' "$1" | awk '{print $4}'; }

same_losses() {
  losses "$1" >"$tmp/la"
  losses "$2" >"$tmp/lb"
  paste "$tmp/la" "$tmp/lb" | awk -v tol="$3" -v want="$4" '
    { n++; d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1; r = s > 0 ? d / s : d
      if (r > worst) worst = r; if (d > tol * s + 1e-7) bad++ }
    END { printf "%d steps, worst relative difference %.2e\n", n, worst; exit !(n == want && !bad) }'
}
