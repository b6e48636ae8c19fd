"""The worker subprocess protocol (``python -m SculptorGANLib.slicer_worker``), without Slicer.

Progress lines, the manifest written last, exit codes and error kinds for bad input, no GPU,
missing packages and cancel — and that failed or cancelled runs leave no outputs behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from SculptorGANLib.slicer_worker import EXIT_CODES, MANIFEST, PREFIX, emit, parse_line, read_outputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    from SculptorGANLib.io.volumes import write_volume
    from SculptorGANLib.synthetic.phantom import make_phantom

    ct, _ = make_phantom(shape=(24, 48, 48), spacing=(6.0, 6.0, 6.0), seed=3)
    path = tmp_path_factory.mktemp("worker") / "input.nrrd"
    write_volume(ct, path, compress=False)
    return ct, path


def run_worker(*args, env_extra=None, stdin=subprocess.DEVNULL, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "SculptorGANLib.slicer_worker", *map(str, args)], env=env,
                          stdin=stdin, capture_output=True, text=True, timeout=timeout)
    events = [e for e in map(parse_line, proc.stdout.splitlines()) if e]
    return proc, events


def test_parse_line_roundtrip(capsys):
    emit("progress", fraction=0.5, message="half")
    line = capsys.readouterr().out
    assert line.startswith(PREFIX) and line.endswith("\n")
    assert parse_line(line) == {"event": "progress", "fraction": 0.5, "message": "half"}
    assert parse_line("ordinary log output") is None
    assert parse_line(PREFIX + "{not json") is None


def test_success_streams_progress_and_writes_manifest_last(phantom_file, tmp_path):
    ct, path = phantom_file
    out = tmp_path / "out"
    proc, events = run_worker("--input", path, "--output", out, "--steps", "interpolate,segment", "--factor", "2",
                              "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert Path(events[-1]["manifest"]) == out / MANIFEST
    manifest, ct_out, structures = read_outputs(out)
    assert set(manifest["files"]) == {"ct", "structures"}
    assert ct_out.shape[0] == 2 * ct.shape[0] - 1 and ct_out.geometry.spacing[2] == ct.geometry.spacing[2] / 2
    assert structures.labels == {1: "kidney_left", 2: "kidney_right", 3: "tumor"}
    assert structures.same_grid(ct_out)
    assert sorted(os.listdir(out)) == ["ct.nrrd", MANIFEST, "structures.nrrd"]  # no staging leftovers


def test_no_interpolation_writes_no_volume(phantom_file, tmp_path):
    _, path = phantom_file
    proc, _ = run_worker("--input", path, "--output", tmp_path, "--steps", "segment", "--device", "cpu")
    assert proc.returncode == 0
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert list(manifest["files"]) == ["structures"]


def test_bad_input_is_an_input_error(tmp_path):
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\nnot really\n")
    proc, events = run_worker("--input", bad, "--output", tmp_path / "out")
    assert proc.returncode == EXIT_CODES["input"]
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "input"
    assert str(bad) in events[-1]["message"]
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_no_gpu_is_reported(phantom_file, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    _, path = phantom_file
    proc, events = run_worker("--input", path, "--output", tmp_path / "out", "--device", "cuda")
    assert proc.returncode == EXIT_CODES["no_gpu"], proc.stdout
    assert events[-1]["kind"] == "no_gpu" and "GPU" in events[-1]["message"]


def test_missing_package_is_reported(phantom_file, tmp_path):
    """A package that cannot be imported (here scipy, shadowed) → kind missing_dependency, exit 5."""
    _, path = phantom_file
    shadow = tmp_path / "shadow" / "scipy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'scipy'\", name='scipy')\n")
    proc, events = run_worker("--input", path, "--output", tmp_path / "out", "--steps", "segment",
                              env_extra={"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{REPO}"})
    assert proc.returncode == EXIT_CODES["missing_dependency"], proc.stdout + proc.stderr
    assert events[-1]["kind"] == "missing_dependency" and "scipy" in events[-1]["message"]


def test_cancel_on_stdin_stops_with_nothing_written(phantom_file, tmp_path):
    _, path = phantom_file
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "SculptorGANLib.slicer_worker", "--input", str(path),
                             "--output", str(out), "--cancel-on-stdin", "--test-delay", "60"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    first = parse_line(proc.stdout.readline())
    assert first["event"] == "start"
    started = time.monotonic()
    proc.stdin.write("cancel\n")
    proc.stdin.flush()
    rest = [e for e in map(parse_line, proc.stdout.read().splitlines()) if e]
    assert proc.wait(timeout=30) == EXIT_CODES["cancelled"]
    assert time.monotonic() - started < 10
    assert rest[-1] == {"event": "error", "kind": "cancelled", "message": "cancelled by the user"}
    assert not out.exists() or not any(out.iterdir())


def test_worker_client_events(phantom_file, tmp_path):
    """SculptorGANModuleLib.worker.WorkerJob: non-blocking poll, then the final event and exit code."""
    sys.path.insert(0, str(REPO / "SculptorGAN"))
    from SculptorGANModuleLib.worker import WorkerJob

    _, path = phantom_file
    job = WorkerJob(["--input", str(path), "--output", str(tmp_path / "o"), "--steps", "segment"],
                    python=sys.executable)
    seen = []
    assert job.wait(timeout=120, onEvent=seen.append) == 0
    assert [e["event"] for e in seen if e["event"] != "output"][-1] == "done"
    assert job.lastEvent["event"] == "done" and job.finished
    job.close()
    np.testing.assert_equal(json.loads((tmp_path / "o" / MANIFEST).read_text())["version"], 1)


def test_classify_error_kinds():
    from SculptorGANLib.core.errors import CancelledError, InputError, SculptorGANError
    from SculptorGANLib.slicer_worker import classify

    assert classify(CancelledError("cancelled by the user"))[0] == "cancelled"
    assert classify(ModuleNotFoundError("No module named 'torch'", name="torch")) == (
        "missing_dependency", "Python package 'torch' is not installed")
    assert classify(MemoryError())[0] == "out_of_memory"
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))[0] == "out_of_memory"
    assert classify(SculptorGANError("device 'cuda' requested but no CUDA GPU is available"))[0] == "no_gpu"
    assert classify(InputError("ct.nii: not readable")) == ("input", "ct.nii: not readable")
    kind, message = classify(ZeroDivisionError("division by zero"))
    assert kind == "error" and message == "ZeroDivisionError: division by zero"
    assert set(EXIT_CODES) >= {"cancelled", "out_of_memory", "missing_dependency", "no_gpu", "input", "error"}
