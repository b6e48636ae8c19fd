"""The worker subprocess (``python -m SculptorGANLib.slicer_worker``) and its client, without Slicer.

Options as one JSON document, progress lines, the manifest written last, exit codes and error kinds
(bad input, bad options, no GPU, missing packages, cancel), UTF-8 output, device auto never MPS, and
Cancel through a ``PythonSlicer``-like launcher (the real Python is the launcher's *child*): the run
stops, or is killed with its whole process tree, and no process is left running.
Runs on Python 3.9 as well (tests that need torch skip there).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from SculptorGANLib.slicer_worker import EXIT_CODES, MANIFEST, PREFIX, emit, parse_line, read_outputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SculptorGAN"))
from SculptorGANModuleLib.worker import WorkerJob, _alive  # noqa: E402

HAS_TORCH = True
try:
    import torch  # noqa: F401
except ImportError:
    HAS_TORCH = False
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (e.g. the Python 3.9 check)")


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    from SculptorGANLib.io.volumes import write_volume
    from SculptorGANLib.synthetic.phantom import make_phantom

    ct, _ = make_phantom(shape=(24, 48, 48), spacing=(6.0, 6.0, 6.0), seed=3)
    path = tmp_path_factory.mktemp("worker") / "input.nrrd"
    write_volume(ct, path, compress=False)
    return ct, path


def run_worker(*args, options=None, env_extra=None, stdin=subprocess.DEVNULL, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    extra = ["--options", json.dumps(options)] if options is not None else []
    proc = subprocess.run([sys.executable, "-m", "SculptorGANLib.slicer_worker", *map(str, args), *extra], env=env,
                          stdin=stdin, capture_output=True, timeout=timeout)
    stdout = proc.stdout.decode("utf-8")  # strict: the worker must write UTF-8
    events = [e for e in map(parse_line, stdout.splitlines()) if e]
    return proc, stdout, events


@pytest.fixture
def launcher(tmp_path):
    """A stand-in for Slicer's PythonSlicer: starts the real Python as a child (its own pipe as the
    child's stdin, never written: stdin is NOT forwarded) and waits for it."""
    script = tmp_path / "PythonSlicerLike"
    script.write_text(f"#!{sys.executable}\n"
                      "import subprocess, sys\n"
                      "child = subprocess.Popen([sys.executable] + sys.argv[1:], stdin=subprocess.PIPE)\n"
                      "sys.exit(child.wait())\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    if os.name == "nt":
        pytest.skip("the launcher stand-in is a POSIX script")
    return str(script)


def test_parse_line_roundtrip(capsys):
    emit("progress", fraction=0.5, message="half")
    line = capsys.readouterr().out
    assert line.startswith(PREFIX) and line.endswith("\n")
    assert parse_line(line) == {"event": "progress", "fraction": 0.5, "message": "half"}
    assert parse_line("ordinary log output") is None
    assert parse_line(PREFIX + "{not json") is None


def test_client_uses_the_library_parser():
    from SculptorGANModuleLib.worker import parseLine

    assert parseLine(PREFIX + '{"event": "done", "manifest": "m"}\n') == {"event": "done", "manifest": "m"}
    assert parseLine("plain text\n") == {"event": "output", "line": "plain text"}


@needs_torch
def test_success_streams_progress_and_writes_manifest_last(phantom_file, tmp_path):
    ct, path = phantom_file
    out = tmp_path / "out"
    proc, stdout, events = run_worker("--input", path, "--output", out, options={
        "steps": ["interpolate", "segment"], "factor": 2, "device": "cpu", "interpolation_method": "linear"})
    assert proc.returncode == 0, stdout
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
    assert manifest["info"]["device"] == "cpu"


def test_options_from_a_file_and_linear_interpolation(phantom_file, tmp_path):
    """Runs without torch too (classical interpolation): the worker end to end on any Python."""
    ct, path = phantom_file
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"steps": ["interpolate"], "factor": 3, "interpolation_method": "linear"}))
    proc, stdout, events = run_worker("--input", path, "--output", tmp_path / "out", "--options", f"@{options}")
    assert proc.returncode == 0, stdout
    assert events[0]["python"] == sys.version.split()[0]
    manifest, ct_out, structures = read_outputs(tmp_path / "out")
    assert structures is None and ct_out.shape[0] == 3 * ct.shape[0] - 2
    assert manifest["info"]["methods"]["interpolate"]["method"].startswith("linear")


@needs_torch
def test_no_interpolation_writes_no_volume(phantom_file, tmp_path):
    _, path = phantom_file
    proc, stdout, _ = run_worker("--input", path, "--output", tmp_path, options={"steps": ["segment"], "device": "cpu"})
    assert proc.returncode == 0, stdout
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert list(manifest["files"]) == ["structures"]


@pytest.mark.parametrize("options, words", [
    ({"stepz": ["segment"]}, "unknown option(s) stepz"),
    ({"overlap": 2.0}, "overlap"),
    ({"roi": "1,2,3"}, "ROI"),
])
def test_bad_options_are_input_errors_before_reading(tmp_path, options, words):
    proc, stdout, events = run_worker("--input", tmp_path / "not-read.nrrd", "--output", tmp_path / "out",
                                      options=options)
    assert proc.returncode == EXIT_CODES["input"], stdout
    assert events[-1]["kind"] == "input" and words in events[-1]["message"]
    assert "not-read" not in events[-1]["message"]  # the options failed first


def test_bad_input_is_an_input_error_in_utf8(tmp_path):
    """The message names the file — with non-ASCII characters intact even when the console is not UTF-8."""
    bad = tmp_path / "Nieren-Übersicht_ü.nrrd"
    bad.write_bytes(b"NRRD0004\nnot really\n")
    proc, stdout, events = run_worker("--input", bad, "--output", tmp_path / "out",
                                      env_extra={"PYTHONIOENCODING": "ascii", "PYTHONUTF8": "0"})
    assert proc.returncode == EXIT_CODES["input"], stdout
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "input"
    assert str(bad) in events[-1]["message"]
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_worker_output_is_utf8_whatever_the_console(tmp_path):
    """Log lines (tracebacks, library output) with non-ASCII text must not crash a worker whose console is
    not UTF-8 (Windows code pages): the worker switches its streams to UTF-8 first."""
    code = ("import sys; from SculptorGANLib.slicer_worker import _utf8_output; _utf8_output(); "
            "print('Nieren-\u00dcbersicht \u2265 2 mm \u2026'); print('\u00e9', file=sys.stderr)")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONIOENCODING="ascii", PYTHONUTF8="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode("utf-8").strip() == "Nieren-\u00dcbersicht \u2265 2 mm \u2026"
    assert proc.stderr.decode("utf-8").strip() == "\u00e9"
    plain = subprocess.run([sys.executable, "-c", code.replace("_utf8_output(); ", "")], capture_output=True,
                           env=env, timeout=60)
    assert plain.returncode != 0 and b"UnicodeEncodeError" in plain.stderr  # what the switch prevents


@needs_torch
def test_no_gpu_is_reported(phantom_file, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    _, path = phantom_file
    proc, stdout, events = run_worker("--input", path, "--output", tmp_path / "out", options={"device": "cuda"})
    assert proc.returncode == EXIT_CODES["no_gpu"], stdout
    assert events[-1]["kind"] == "no_gpu" and "GPU" in events[-1]["message"]


def test_device_auto_never_picks_mps(monkeypatch):
    """auto is CUDA when usable, else the CPU, even where Apple MPS reports itself available."""
    from SculptorGANLib.slicer_worker import worker_device

    fake = type(sys)("torch")
    fake.cuda = type("cuda", (), {"is_available": staticmethod(lambda: False)})
    fake.backends = type("backends", (), {"mps": type("mps", (), {"is_available": staticmethod(lambda: True)})})
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert worker_device("auto") == "cpu" and worker_device(None) == "cpu"
    fake.cuda = type("cuda", (), {"is_available": staticmethod(lambda: True)})
    assert worker_device("auto") == "cuda"
    assert worker_device("mps") == "mps"  # an explicit choice is honoured


@needs_torch  # without torch the worker's model check reports torch first (also missing_dependency)
def test_missing_package_is_reported(phantom_file, tmp_path):
    """A package that cannot be imported (here scipy, shadowed) → kind missing_dependency, exit 5."""
    _, path = phantom_file
    shadow = tmp_path / "shadow" / "scipy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'scipy'\", name='scipy')\n")
    proc, stdout, events = run_worker("--input", path, "--output", tmp_path / "out", options={"steps": ["segment"]},
                                      env_extra={"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{REPO}"})
    assert proc.returncode == EXIT_CODES["missing_dependency"], stdout
    assert events[-1]["kind"] == "missing_dependency" and "scipy" in events[-1]["message"]


def test_cancel_on_stdin_stops_with_nothing_written(phantom_file, tmp_path):
    _, path = phantom_file
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "SculptorGANLib.slicer_worker", "--input", str(path),
                             "--output", str(out), "--cancel-on-stdin", "--test-delay", "600"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    first = parse_line(proc.stdout.readline())
    assert first["event"] == "start"
    proc.stdin.write("cancel\n")
    proc.stdin.flush()
    rest = [e for e in map(parse_line, proc.stdout.read().splitlines()) if e]
    # the 600 s start delay was cut short by the cancel line (a hang would hit this wait's timeout)
    assert proc.wait(timeout=60) == EXIT_CODES["cancelled"]
    assert rest[-1] == {"event": "error", "kind": "cancelled", "message": "cancelled by the user"}
    assert not out.exists() or not any(out.iterdir())


def _wait_for_start(job, timeout=60.0):
    deadline = time.monotonic() + timeout
    while job.workerPid is None:
        job.poll()
        assert time.monotonic() < deadline, "the worker never started"
        assert not job.finished
        time.sleep(0.05)


def test_cancel_through_a_launcher_that_does_not_forward_stdin(phantom_file, tmp_path, launcher):
    """The cancel file reaches the real Python behind the launcher: it stops by itself, nothing written."""
    _, path = phantom_file
    job = WorkerJob(["--input", str(path), "--output", str(tmp_path / "o"), "--test-delay", "600"], python=launcher,
                    killAfter=120)
    try:
        _wait_for_start(job)
        assert job.workerPid != job.process.pid  # the real worker is the launcher's child
        job.cancel()
        assert job.wait(timeout=60) == EXIT_CODES["cancelled"]
        assert job.lastEvent["kind"] == "cancelled"
        assert not _alive(job.workerPid) and not _alive(job.process.pid)
        assert not (tmp_path / "o" / MANIFEST).exists()
    finally:
        job.close()


def test_kill_after_cancel_ends_the_whole_process_tree(phantom_file, tmp_path, launcher):
    """A worker that does not react to cancel is killed after ``killAfter`` — launcher AND real Python."""
    _, path = phantom_file
    job = WorkerJob(["--input", str(path), "--output", str(tmp_path / "o"), "--test-delay", "600",
                     "--test-ignore-cancel"], python=launcher, killAfter=1.0)
    try:
        _wait_for_start(job)
        real = job.workerPid
        job.cancel()
        job.wait(timeout=60)
        assert job.finished and job.returncode != 0
        deadline = time.monotonic() + 10
        while _alive(real) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(real), "the real worker process survived the kill"
        assert not _alive(job.process.pid)
    finally:
        job.close()


def test_close_kills_a_running_worker(phantom_file, tmp_path, launcher):
    """Closing the job (Slicer exits, the scene closes) leaves no process behind either."""
    _, path = phantom_file
    job = WorkerJob(["--input", str(path), "--output", str(tmp_path / "o"), "--test-delay", "600",
                     "--test-ignore-cancel"], python=launcher)
    _wait_for_start(job)
    real = job.workerPid
    job.close()
    deadline = time.monotonic() + 10
    while _alive(real) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(real) and not _alive(job.process.pid)
    assert not os.path.exists(job.cancelFile)


@needs_torch
def test_worker_client_events(phantom_file, tmp_path):
    """WorkerJob: non-blocking poll, then the final event and exit code."""
    _, path = phantom_file
    job = WorkerJob(["--input", str(path), "--output", str(tmp_path / "o"), "--options", '{"steps": ["segment"]}'],
                    python=sys.executable)
    seen = []
    assert job.wait(timeout=180, onEvent=seen.append) == 0
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
