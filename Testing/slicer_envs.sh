#!/usr/bin/env bash
# The module and worker in environments like Slicer's own (run by .ci/run; `make slicer-envs`):
#
#   py39        Slicer 5.8 ships Python 3.9 (numpy 1.26.4, scipy 1.13.1): compile the module and the library
#               with 3.9 and run their unit tests there (tests that need torch or slicer-core skip: PyPI has
#               no CPU torch wheel for 3.9 and slicer-core needs 3.10+).
#   slicer-like A venv holding only what Slicer ships (numpy, SimpleITK, VTK, pydicom, requests) plus the
#               packages the module's first-use installer installs (dependencies.REQUIREMENTS): the worker
#               must run end to end there (interpolate + segment on the phantom).
#
# Venvs are cached under ${SCULPTORGAN_ENV_CACHE:-~/.cache/sculptorgan} and rebuilt when their package list
# changes; only PyPI (and this machine's local wheels) are used.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
CACHE=${SCULPTORGAN_ENV_CACHE:-$HOME/.cache/sculptorgan}
mkdir -p "$CACHE"
export PYTHONUTF8=1 VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow

venv() {  # venv DIR PYTHON PACKAGES... : (re)build DIR unless its stamp matches the package list
  local dir=$1 python=$2; shift 2
  local key
  key=$(printf '%s\n' "$python" "$@" | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/.key" 2>/dev/null)" != "$key" ]; then
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$dir/bin/python" -m pip install -q "$@"
    echo "$key" > "$dir/.key"
  fi
}

find_py39() {
  for candidate in "${PYTHON39:-}" python3.9 "$HOME"/.pyenv/versions/3.9*/bin/python /usr/bin/python3.9; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

py39() {
  local python
  python=$(find_py39) || { echo "slicer-envs py39: FAILED - no Python 3.9 found (set PYTHON39=/path/to/python3.9)"; exit 1; }
  local dir=$CACHE/py39
  venv "$dir" "$python" numpy==1.26.4 scipy==1.13.1 SimpleITK vtk==9.6.2 pydicom requests safetensors pynrrd pytest
  echo "slicer-envs py39: $("$dir/bin/python" --version) with numpy $("$dir/bin/python" -c 'import numpy; print(numpy.__version__)')"
  "$dir/bin/python" - <<'PY'
import pathlib, py_compile, sys, tempfile
bad, out = [], tempfile.mkdtemp()
for path in sorted(p for d in ("SculptorGAN", "SculptorGANLib") for p in pathlib.Path(d).rglob("*.py")):
    try:
        py_compile.compile(str(path), cfile=f"{out}/check.pyc", doraise=True)
    except py_compile.PyCompileError as exc:
        bad.append(f"{path}: {exc.msg.strip().splitlines()[-1]}")
print(f"compiled the module and library with Python {sys.version.split()[0]}: {len(bad)} errors")
sys.exit("\n".join(bad) if bad else 0)
PY
  "$dir/bin/python" -m pytest -q -p no:cacheprovider Testing/test_py39_compat.py Testing/test_roi.py \
    Testing/test_slicer_helpers.py Testing/test_slicer_worker.py Testing/test_options.py Testing/test_io.py \
    Testing/test_anatomy.py Testing/test_phantom.py Testing/test_measure.py
}

slicer_like() {
  local reqs
  reqs=$(python3 - <<'PY'
import ast, pathlib
tree = ast.parse(pathlib.Path("SculptorGAN/SculptorGANModuleLib/dependencies.py").read_text())
for node in tree.body:
    target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
    if getattr(target, "id", "") == "REQUIREMENTS":
        print(" ".join(ast.literal_eval(node.value).values()))
PY
)
  [ -n "$reqs" ] || { echo "slicer-envs slicer-like: FAILED - no REQUIREMENTS in dependencies.py"; exit 1; }
  local dir=$CACHE/slicer-like
  # Slicer's own packages, then a CPU torch (the local wheel, as `make install` does), then the installer's list
  # shellcheck disable=SC2086
  venv "$dir" python3 numpy SimpleITK vtk==9.6.2 pydicom requests "torch==2.13.0" $reqs
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  "$dir/bin/python" -c "import sys; sys.path.insert(0, '$REPO')
from SculptorGANLib.synthetic.phantom import make_phantom
from SculptorGANLib.io.volumes import write_volume
ct, _ = make_phantom(shape=(24, 64, 64), spacing=(3.0, 3.0, 6.0), seed=1)
write_volume(ct, '$work/ct.nrrd', compress=False)"
  if ! PYTHONPATH="$REPO" "$dir/bin/python" -m SculptorGANLib.slicer_worker --input "$work/ct.nrrd" \
       --output "$work/out" --options '{"steps": ["interpolate", "segment"], "factor": 2, "device": "cpu"}' \
       > "$work/worker.log" 2>&1; then
    tail -5 "$work/worker.log"
    echo "slicer-envs slicer-like: FAILED - the worker did not run with only Slicer's packages + ($reqs)"
    exit 1
  fi
  "$dir/bin/python" -c "import json, sys; m = json.load(open('$work/out/manifest.json'));
assert set(m['files']) == {'ct', 'structures'}, m['files']; print('manifest files:', sorted(m['files']))"
  echo "slicer-envs slicer-like: worker ran end to end with only Slicer's packages + the installer's list ($reqs)"
}

case "${1:-all}" in
  py39) py39 ;;
  slicer-like) slicer_like ;;
  all) py39; slicer_like ;;
  *) echo "usage: $0 [py39|slicer-like|all]"; exit 2 ;;
esac
