#!/bin/sh
# test_html.sh CARVE: the HTML plan report (`carve plan --html`, `carve
# compare --html`). Pages for a whole plan, pipeline plans (GPipe or 1F1B,
# and ZB-H1 with weight-gradient blocks), a plan of one mesh, and a
# comparison; each is checked for: well-formed structure, no external
# reference, one timeline row per pipeline device, as many F/B/W blocks per
# device as the schedule has tasks there, every parameter in the tensors
# table, the capacity and each stage's memory as plan.json gives them, and
# names from a cluster file or a plan file escaped. Writing onto a directory
# or a FIFO fails with a message. Prints "N passed, M failed".
set -u
carve=$1
. "$(dirname "$0")/tally.sh"
# check WHAT COMMAND...: a shell condition
check() {
  what=$1
  shift
  if "$@"; then ok; else bad "$what"; fi
}
count() { grep -o -- "$1" "$2" | wc -l | tr -d ' '; }
# a number field of a plan.json ("microbatches": 4,)
field() { sed -n "s/^ *\"$1\": \([0-9.e+-]*\).*/\1/p" "$2" | head -1; }

# structure: one document, every opened element closed, nothing fetched
wellformed() {
  page=$1
  for tag in html head body style; do
    [ "$(count "<$tag[ >]" "$page")" = 1 ] && [ "$(count "</$tag>" "$page")" = 1 ] || {
      bad "$page: <$tag> not exactly once, opened and closed"
      return
    }
  done
  for tag in table tr svg g p h2 title; do
    [ "$(count "<$tag[ >]" "$page")" = "$(count "</$tag>" "$page")" ] || {
      bad "$page: <$tag> opened $(count "<$tag[ >]" "$page") times, closed $(count "</$tag>" "$page")"
      return
    }
  done
  head -1 "$page" | grep -q '^<!DOCTYPE html>$' || {
    bad "$page: no doctype"
    return
  }
  tail -1 "$page" | grep -q '^</html>$' || {
    bad "$page: does not end with </html>"
    return
  }
  if grep -Eiq '(src|href|action)[[:space:]]*=|<link|<script|<iframe|<img|@import|url\([^#]' "$page"; then
    bad "$page: an external reference or a script:"
    grep -Ein '(src|href|action)[[:space:]]*=|<link|<script|<iframe|<img|@import|url\([^#]' "$page" | head -3
    return
  fi
  ok
}

# the timeline: a row per pipeline device, and per device as many F and B
# (and W for ZB-H1) blocks as microbatches x chunks per device
timeline() {
  page=$1 plan=$2
  rows=$(grep -c '"predicted_stage_s"' "$plan")
  mb=$(field microbatches "$plan")
  v=$(field chunks_per_device "$plan")
  grep -q '"zb-h1"' "$plan" && w=$((mb * v)) || w=0
  [ "$(count '<g class="row"' "$page")" = "$rows" ] || {
    bad "$page: $(count '<g class="row"' "$page") timeline rows, want $rows (the plan's stages)"
    return
  }
  d=0
  while [ $d -lt "$rows" ]; do
    for k in f:$((mb * v)) b:$((mb * v)) w:$w; do
      got=$(count "class=\"blk-${k%%:*}\" data-device=\"$d\"" "$page")
      [ "$got" = "${k#*:}" ] || {
        bad "$page: device $d has $got ${k%%:*} blocks, want ${k#*:}"
        return
      }
    done
    d=$((d + 1))
  done
  ok
}

# the capacity as plan.json gives it, and (whole plans) each stage's memory
memory() {
  page=$1 plan=$2
  cap=$(field device_memory_bytes "$plan")
  grep -q "data-capacity-bytes=\"$cap\"" "$page" || {
    bad "$page: capacity is $(grep -o 'data-capacity-bytes="[0-9]*"' "$page"), plan.json says $cap"
    return
  }
  want=$(sed -n 's/.*"predicted_stage_s".*"memory_per_device_bytes": \([0-9]*\).*/\1/p' "$plan" | tr '\n' ' ')
  [ -n "$want" ] || want=$(field memory_per_device_bytes "$plan")" "
  got=$(grep -o 'class="bar" data-total-bytes="[0-9]*"' "$page" | sed 's/.*="\([0-9]*\)"/\1/' | tr '\n' ' ')
  [ "$got" = "$want" ] || {
    bad "$page: memory bars total '$got', plan.json '$want'"
    return
  }
  ok
}

# every parameter of the model (from its plan of one mesh) in the tensors table
params() {
  page=$1 names=$2
  missing=0
  for p in $(cat "$names"); do
    grep -q "<td>$p</td>" "$page" || missing=$((missing + 1))
  done
  [ "$missing" = 0 ] && [ -s "$names" ] && ok || bad "$page: $missing of $(wc -l <"$names") parameters not in the tensors table"
}

plan() { # plan NAME ARGS...: carve plan ARGS -o tmp/NAME --html tmp/NAME.html
  name=$1
  shift
  "$carve" plan "$@" -o "$tmp/$name" --html "$tmp/$name.html" >"$tmp/$name.out" 2>&1 || {
    bad "carve plan $* --html: status $?"
    sed 's/^/  | /' "$tmp/$name.out" | head -5
    return 1
  }
}

"$carve" plan gpt --preset gpt-tiny --cluster dgx-a100 --intra-only --json >"$tmp/gpt.json"
sed -n 's/^ *"\([^"]*\)": {"kind": "parameter".*/\1/p' "$tmp/gpt.json" >"$tmp/gpt.params"
check "gpt-tiny has parameters" [ "$(wc -l <"$tmp/gpt.params")" -gt 10 ]

if plan whole gpt --preset gpt-tiny --cluster dgx-a100; then
  wellformed "$tmp/whole.html"
  timeline "$tmp/whole.html" "$tmp/whole/plan.json"
  memory "$tmp/whole.html" "$tmp/whole/plan.json"
  params "$tmp/whole.html" "$tmp/gpt.params"
fi
for m in "dp=2,tp=2,pp=2,mb=4" "dp=2,tp=2,pp=2,mb=4,schedule=zb-h1"; do
  if plan pipe gpt --preset gpt-tiny --cluster dgx-a100 --manual "$m"; then
    wellformed "$tmp/pipe.html"
    timeline "$tmp/pipe.html" "$tmp/pipe/plan.json"
    memory "$tmp/pipe.html" "$tmp/pipe/plan.json"
    params "$tmp/pipe.html" "$tmp/gpt.params"
    check "$m: two stages" grep -q '"stages": \[' "$tmp/pipe/plan.json"
    check "$m: transfers between the stages" grep -q 'class="blk-x" data-device="1"' "$tmp/pipe.html"
  fi
  cp -r "$tmp/pipe" "$tmp/pipe-$(echo "$m" | tr -c 'a-z0-9\n' _)"
done
check "ZB-H1 page names its weight-gradient blocks" grep -q 'weight gradient (W)' "$tmp/pipe.html"
if plan one gpt --preset gpt-tiny --cluster dgx-a100 --intra-only --mesh 2x4 --force-dp; then
  wellformed "$tmp/one.html"
  memory "$tmp/one.html" "$tmp/one/plan.json"
  params "$tmp/one.html" "$tmp/gpt.params"
  check "one mesh: one timeline row" [ "$(count '<g class="row"' "$tmp/one.html")" = 1 ]
  for k in parameters gradients optimizer activations; do
    check "one mesh: memory by kind ($k)" grep -q "class=\"mem-$k\"" "$tmp/one.html"
  done
  check "one mesh: its collectives" grep -q '<table class="collectives">' "$tmp/one.html"
fi

# compare: the side-by-side table, then a section per plan with its timeline
"$carve" compare "$tmp/whole" "$tmp"/pipe-*zb* "$tmp/one" --html "$tmp/cmp.html" >"$tmp/cmp.out" 2>&1
check "compare --html: status 0" [ $? = 0 ]
if [ -s "$tmp/cmp.html" ]; then
  wellformed "$tmp/cmp.html"
  check "compare: the table" grep -q '<table class="compare">' "$tmp/cmp.html"
  check "compare: three timelines" [ "$(count '<svg class="timeline"' "$tmp/cmp.html")" = 3 ]
  # the automatic plan's rows and W blocks are its own page's (gpt-tiny's
  # best plan has had one stage and two: the optimizer update's cost per
  # parameter tensor favours fewer tensors per device, docs/cost-model.md)
  whole_rows=$(count '<g class="row"' "$tmp/whole.html")
  whole_w=$(count 'class="blk-w" data-device="1"' "$tmp/whole.html")
  check "compare: $whole_rows + 2 + 1 rows" [ "$(count '<g class="row"' "$tmp/cmp.html")" = $((whole_rows + 3)) ]
  check "compare: ZB-H1's W blocks from its plan file" \
    [ "$(count 'class="blk-w" data-device="1"' "$tmp/cmp.html")" = $((whole_w + 4)) ]
  check "compare: the one-mesh plan's tensors" [ "$(count '<table class="tensors">' "$tmp/cmp.html")" = 1 ]
  params "$tmp/cmp.html" "$tmp/gpt.params"
else
  bad "compare wrote no page"
  sed 's/^/  | /' "$tmp/cmp.out" | head -5
fi

# names from files are escaped (a model's names are identifiers): a cluster's
# device name, a plan file's model and
# tensor names, and a plan file's path
printf '%s\n' 'name evil' 'device <script>alert("dev")</script>' 'nodes 1' 'devices_per_node 4' 'flops_f32 1e12' \
  'memory 1e10' 'mem_bandwidth 1e12' 'intra_bandwidth 1e11' 'intra_latency 1e-6' 'inter_bandwidth 1e10' 'inter_latency 1e-5' >"$tmp/evil.cluster"
if plan evil mlp --cluster "$tmp/evil.cluster" --intra-only; then
  wellformed "$tmp/evil.html"
  check "a cluster's device name escaped" grep -q '&lt;script&gt;alert(&quot;dev&quot;)&lt;/script&gt;' "$tmp/evil.html"
fi
mkdir "$tmp/<i>dir"
sed 's/"layers.0.w_q"/"<script>x<\/script>"/; s/"model": "gpt"/"model": "<img onerror=x>"/' "$tmp/one/plan.json" \
  >"$tmp/<i>dir/plan.json"
"$carve" compare "$tmp/<i>dir" "$tmp/whole" --html "$tmp/evil-cmp.html" >/dev/null 2>&1
if [ -s "$tmp/evil-cmp.html" ]; then
  wellformed "$tmp/evil-cmp.html"
  check "a plan file's tensor name escaped" grep -q '<td>&lt;script&gt;x&lt;/script&gt;</td>' "$tmp/evil-cmp.html"
  check "a plan file's model name escaped" grep -q '&lt;img onerror=x&gt;' "$tmp/evil-cmp.html"
  check "a plan file's path escaped" grep -q '&lt;i&gt;dir/plan.json' "$tmp/evil-cmp.html"
else
  bad "compare of an edited plan wrote no page"
fi

# a directory or a FIFO is not overwritten, and the command says why
mkfifo "$tmp/fifo"
for target in "$tmp/whole" "$tmp/fifo"; do
  timeout 60 "$carve" plan mlp --cluster dgx-a100 --intra-only --html "$target" >/dev/null 2>"$tmp/err"
  st=$?
  check "--html onto $target: status 1 (got $st)" [ $st = 1 ]
  check "--html onto $target: a message" grep -q "cannot write the report.*not a regular file" "$tmp/err"
  timeout 60 "$carve" compare "$tmp/one" --html "$target" >/dev/null 2>"$tmp/err"
  st=$?
  check "compare --html onto $target: status 1 (got $st)" [ $st = 1 ]
  check "compare --html onto $target: a message" grep -q "cannot write the report.*not a regular file" "$tmp/err"
done
check "the FIFO is still a FIFO" [ -p "$tmp/fifo" ]
check "the directory is still a directory" [ -d "$tmp/whole" ]
"$carve" plan mlp --cluster dgx-a100 --intra-only --html "$tmp/no/such/dir/r.html" >/dev/null 2>"$tmp/err"
check "--html into a missing folder: status 1" [ $? = 1 ]
check "--html into a missing folder: a message" grep -q "cannot write the report" "$tmp/err"
check "no temporary files left" [ -z "$(find "$tmp" -name '.*.html.*')" ]

tally
