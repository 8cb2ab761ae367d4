#!/bin/sh
# test_safetensors.sh CARVE: what 'carve export' writes, Python's safetensors
# package reads, and what that package writes, '--init-from' reads.
#
# A checkpoint is exported; Python reads every tensor (checking the names,
# shapes and dtype against the checkpoint's manifest, and the metadata's
# step), then writes them again with the package's own writer. A run started
# from that file holds the parameters, bit for bit, that a run started from
# carve's own export holds. The package's file with one tensor left out, and
# with one tensor of another shape, is refused with the tensor named.
#
# Needs python3 with the safetensors and numpy packages (pip install
# safetensors numpy): without them the test says so and exits 77, which
# ctest reports as skipped.
set -u
carve=$1
if ! python3 -c "import safetensors.numpy" 2>/dev/null; then
  echo "skipped: python3 with the safetensors and numpy packages is not installed (pip install safetensors numpy)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
"$carve" compile gpt --preset gpt-tiny --set layers=2 -o "$tmp/p" >/dev/null &&
  "$carve" run "$tmp/p" --steps 2 --quiet --checkpoint-dir "$tmp/ck" &&
  "$carve" export "$tmp/ck" -o "$tmp/carve.safetensors" >/dev/null || { echo "FAILED: export"; exit 1; }
cat >"$tmp/check.py" <<'PY'
import json, sys
from safetensors import safe_open
from safetensors.numpy import save_file
import numpy
src, manifest, out = sys.argv[1:4]
want = {}
for rank in json.load(open(manifest))["ranks"]:
    for p in rank["pieces"]:
        if p["kind"] == "param":
            want[p["tensor"]] = list(p["shape"])
got = {}
with safe_open(src, framework="numpy") as f:
    assert f.metadata()["carve_step"] == "2", f.metadata()
    for name in f.keys():
        got[name] = f.get_tensor(name)
        assert "float32" in str(got[name].dtype), (name, got[name].dtype)
assert {k: list(v.shape) for k, v in got.items()} == want, "names or shapes differ from the manifest"
save_file(got, out)
dropped = dict(got); dropped.pop("wte")
save_file(dropped, out + ".missing")
reshaped = dict(got); reshaped["wpe"] = reshaped["wpe"].reshape(-1)
save_file(reshaped, out + ".reshaped")
extra = dict(got); extra["position_ids"] = numpy.arange(64, dtype=numpy.int64).reshape(1, 64)
save_file(extra, out + ".extra")
print(len(got), "tensors read and written by the safetensors package")
PY
if python3 "$tmp/check.py" "$tmp/carve.safetensors" "$tmp/ck/step-00000002/manifest.json" "$tmp/py.safetensors" &&
  "$carve" run "$tmp/p" --steps 0 --quiet --init-from "$tmp/carve.safetensors" --save-params "$tmp/a" &&
  "$carve" run "$tmp/p" --steps 0 --quiet --init-from "$tmp/py.safetensors" --save-params "$tmp/b" &&
  cmp -s "$tmp/a.rank0" "$tmp/b.rank0" &&
  "$carve" run "$tmp/p" --steps 0 --quiet --init-from "$tmp/py.safetensors.extra" --save-params "$tmp/c" &&
  cmp -s "$tmp/a.rank0" "$tmp/c.rank0"; then
  echo "ok: the package reads carve's file, carve reads the package's (also with an int64 tensor the model does not have), parameters bit for bit"
else
  echo "FAILED: round trip through the safetensors package"
  fail=1
fi
for c in "missing:has no tensor 'wte'" "reshaped:tensor 'wpe' is \[8192\]"; do
  if ! "$carve" run "$tmp/p" --steps 0 --quiet --init-from "$tmp/py.safetensors.${c%%:*}" 2>"$tmp/err" &&
    grep -q -- "${c#*:}" "$tmp/err"; then
    echo "ok: ${c%%:*} refused"
  else
    echo "FAILED: ${c%%:*}: $(cat "$tmp/err")"
    fail=1
  fi
done
exit $fail
