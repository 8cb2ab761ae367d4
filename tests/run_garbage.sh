#!/bin/sh
# run_garbage.sh: no crash, no hang on hostile input.
#
# usage: sh run_garbage.sh CARVE_BINARY
#
# Runs `CARVE_BINARY check INPUT` on inputs that are not models at all, or
# are models only in the most degenerate sense, and requires each run to
# exit with status 1 or 2 (a reported error) within 10 seconds: never a
# signal (status >= 128, 124 for the timeout), never 0. The inputs are made
# in a temporary directory, deterministically: "random" bytes come from a
# Park-Miller generator in awk with a fixed seed (awk's own rand() differs
# between implementations), so every run and every machine sees the same
# bytes. What is printed on stderr is not checked here; tests/bad/ pins the
# messages.
#
# Cases: an empty file; random bytes (3 seeds); random token soup from the
# language's own alphabet (20 seeds); a 1 MB line (an identifier, a comment,
# a string); 5000 nested parentheses; 5000 nested brackets; 5000 unary
# minuses; 500 nested `repeat 1 {` (unclosed and closed); 5000 stray '}';
# a directory; a missing file.
#
# Also the shapes that once broke the frontend: a 1 MB line of `+` chains
# (stack depth: now bounded per statement), nested repeats with empty bodies
# (now bounded by the total statements unrolled), and 10000 lines that rebind
# one name (naming is linear now: this one is a valid model and must be
# checked within the time limit, so it may also exit 0).
#
# The last line of output is always "N passed, M failed"; the exit status is
# nonzero when any case failed.

if [ $# -ne 1 ]; then
  echo "usage: sh run_garbage.sh CARVE_BINARY" >&2
  exit 2
fi
case $1 in
  /*) carve=$1 ;;
  *) carve=$(pwd)/$1 ;;
esac
if [ ! -x "$carve" ]; then
  echo "run_garbage.sh: '$1' is not an executable" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/carve-garbage.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
cd "$tmp" || exit 2

if command -v timeout >/dev/null 2>&1; then
  limit="timeout 10"
else
  limit=""
  echo "note: no timeout(1) here; a hang would hang this script"
fi

LC_ALL=C
export LC_ALL

# bytes SEED COUNT: COUNT pseudo-random bytes (0..255, NUL included).
bytes() {
  awk -v seed="$1" -v n="$2" 'BEGIN {
    x = seed
    for (i = 0; i < n; i++) {
      x = (x * 16807) % 2147483647
      printf "\\0%03o", x % 256
      if (i % 64 == 63) printf "\n"
    }
  }' | while IFS= read -r chunk; do printf '%b' "$chunk"; done
}

# soup SEED COUNT: COUNT tokens drawn from the language's alphabet, with
# newlines, so that the parser and the elaborator get past the first line.
soup() {
  awk -v seed="$1" -v n="$2" 'BEGIN {
    nt = split("dim|input|param|repeat|if|else|model|preset|loss|x|y|w|a|b|=|=|,|,|[|]|(|)|{|}|:|~|+|-|*|/|//|->|1|2|3|0|0.5|1e-3|\"b h, h f -> b f\"|\"i -> i\"|\"|einsum|gelu|sum|mean|softmax|layernorm|embed|mse|cross_entropy|moe_gate|reshape|i32|f32|tokens|normal|zeros|causal|eps|#", t, "|")
    x = seed
    for (i = 0; i < n; i++) {
      x = (x * 16807) % 2147483647
      printf "%s", t[1 + x % nt]
      x = (x * 16807) % 2147483647
      r = x % 8
      printf "%s", r == 0 ? "\n" : " "
    }
    printf "\n"
  }'
}

# repeat_str COUNT STRING: STRING written COUNT times, no newline.
repeat_str() {
  awk -v n="$1" -v s="$2" 'BEGIN { for (i = 0; i < n; i++) printf "%s", s }'
}

pass=0
fail=0

# check NAME PATH [ok0]: run carve check on PATH and judge the exit status;
# with ok0, a valid model (exit 0) passes too.
check() {
  start=$(date +%s)
  $limit "$carve" check "$2" >/dev/null 2>"$tmp/stderr"
  status=$?
  secs=$(($(date +%s) - start))
  if [ "$status" -eq 1 ] || [ "$status" -eq 2 ] || { [ "$status" -eq 0 ] && [ "${3:-}" = ok0 ]; }; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    case $status in
      0) why="exit status 0: garbage was accepted as a model" ;;
      124) why="no answer within 10 s (timeout)" ;;
      *) if [ "$status" -ge 128 ]; then why="killed by signal $((status - 128))"; else why="exit status $status"; fi ;;
    esac
    echo "FAIL $1: $why (after ${secs}s)"
    tail -n 3 "$tmp/stderr" | cut -c1-200 | sed 's/^/  | /'
  fi
}

: >empty.graph
check "empty file" empty.graph

for seed in 1 42 2024; do
  bytes "$seed" 4096 >"random$seed.graph"
  check "4096 random bytes (seed $seed)" "random$seed.graph"
done

seed=1
while [ "$seed" -le 20 ]; do
  soup "$seed" 400 >"soup$seed.graph"
  check "token soup (seed $seed)" "soup$seed.graph"
  seed=$((seed + 1))
done

repeat_str 1048576 a >long_ident.graph
check "1 MB identifier on one line" long_ident.graph
{ printf '# '; repeat_str 1048576 x; echo; } >long_comment.graph
check "1 MB comment line" long_comment.graph
{ printf 'x = einsum("'; repeat_str 524288 'a '; echo '-> a", x)'; } >long_string.graph
check "1 MB string on one line" long_string.graph

{ printf 'dim a = '; repeat_str 5000 '('; printf 1; repeat_str 5000 ')'; echo; } >parens.graph
check "5000 nested parentheses" parens.graph
{ printf 'x = '; repeat_str 5000 '['; printf 1; repeat_str 5000 ']'; echo; } >brackets.graph
check "5000 nested brackets" brackets.graph
{ printf 'dim a = '; repeat_str 5000 '- '; echo 1; } >minus.graph
check "5000 unary minuses" minus.graph

repeat_str 500 'repeat 1 {
' >repeats_open.graph
check "500 nested 'repeat 1 {', unclosed" repeats_open.graph
{ repeat_str 500 'repeat 1 {
'; repeat_str 500 '}
'; } >repeats_closed.graph
check "500 nested 'repeat 1 {', closed" repeats_closed.graph
repeat_str 5000 '}
' >braces.graph
check "5000 stray '}'" braces.graph

mkdir adir.graph
check "a directory" adir.graph
check "a missing file" missing.graph

{ printf 'dim a = 1'; repeat_str 250000 ' + 1'; echo; } >long_sum.graph
check "1 MB line 'dim a = 1 + 1 + ...'" long_sum.graph
{ printf 'dim a = 4\ninput x[a]\nparam w[a] ~ ones\ny = w'; repeat_str 250000 ' + x'; printf '\nloss = sum(y, 0)\n'; } >long_tsum.graph
check "1 MB line 'y = w + x + x + ...'" long_tsum.graph
printf 'repeat 100000 {\n repeat 100000 {\n  repeat 100000 {\n  }\n }\n}\n' >empty_repeats.graph
check "nested repeats with empty bodies" empty_repeats.graph
{ printf 'dim a = 4\ninput x[a]\nparam w[a] ~ ones\ny = w * 1\n'; repeat_str 10000 'y = y + x
'; printf 'loss = sum(y, 0)\n'; } >many_rebinds.graph
check "10000 lines 'y = y + x' (a valid model)" many_rebinds.graph ok0

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
