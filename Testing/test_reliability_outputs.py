"""The user's data is never lost or corrupted by writing outputs (issue 15, items 1, 2, 4, 5, 6)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from SculptorGANLib.cli import main
from SculptorGANLib.core.errors import InputError, OutputError
from SculptorGANLib.core.volume import CTVolume, Geometry
from SculptorGANLib.io import write_volume
from SculptorGANLib.io.atomic import staged_output_dir

REPO = Path(__file__).resolve().parents[1]
FAST = ("--steps", "interpolate", "--factor", "2", "--method", "linear", "--quiet")


def _ct(path: Path, seed: int = 0, shape=(6, 24, 24)) -> Path:
    array = np.random.default_rng(seed).normal(0, 60, shape).astype(np.float32)
    return write_volume(CTVolume(array, Geometry((1.0, 1.0, 4.0))), path)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ----------------------------------------------------------------------------- item 1: the input is never overwritten
@pytest.mark.parametrize("name", ["ct.nii.gz", "segmentation.nii.gz"])
def test_out_is_the_input_folder_is_refused(tmp_path, capsys, name):
    ct = _ct(tmp_path / name)
    before = _digest(ct)
    code, text = _run(capsys, "run", ct, "--out", tmp_path, *FAST)
    assert code == 2 and "holds the input" in text and str(ct) in text
    assert _digest(ct) == before and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_empty_out_from_the_input_folder_is_refused(tmp_path, capsys, monkeypatch):
    ct = _ct(tmp_path / "ct.nii.gz")
    before = _digest(ct)
    monkeypatch.chdir(tmp_path)
    code, text = _run(capsys, "run", "ct.nii.gz", "--out", "", *FAST)
    assert code == 2 and "empty" in text
    code, text = _run(capsys, "run", "ct.nii.gz", "--out", ".", *FAST)
    assert code == 2 and "holds the input" in text
    assert _digest(ct) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_out_inside_a_dicom_input_folder_is_refused(tmp_path, capsys):
    (tmp_path / "series").mkdir()
    code, text = _run(capsys, "run", tmp_path / "series", "--out", tmp_path / "series" / "out", *FAST)
    assert code == 2 and "inside the input folder" in text
    assert list((tmp_path / "series").iterdir()) == []


# ----------------------------------------------------------------------------- item 2: failed writes are failures
@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """Files this process writes are cut at ``nbytes`` (as a full disk or ``ulimit -f`` would do)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_truncated_volume_write_is_an_error_and_leaves_nothing(tmp_path, capsys):
    ct = _ct(tmp_path / "in.nii.gz", shape=(8, 96, 96))  # ~290 kB of noise: cannot be written under 64 kB
    with _file_size_limit(64 << 10):
        code, text = _run(capsys, "run", ct, "--out", tmp_path / "out", *FAST)
        code2, text2 = _run(capsys, "interpolate", ct, tmp_path / "thin.nii.gz", "--factor", "2", "--method",
                            "linear", "--quiet")
    assert code == 2 and "ct.nii.gz" in text and "incompletely" in text and "partial" not in text
    assert code2 == 2 and "thin.nii.gz" in text2 and "partial" not in text2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


# ----------------------------------------------------------------------------- item 4: replaced, never merged
def test_second_run_replaces_the_folder_as_a_whole(tmp_path):
    from SculptorGANLib.io.atomic import MARKER

    out = tmp_path / "out"
    with staged_output_dir(out) as stage:
        for name in ("kidney_left.stl", "measurements.csv", "report.json"):
            (stage / name).write_text("first patient")
    with staged_output_dir(out) as stage:
        (stage / "report.json").write_text("second patient")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "report.json"]
    assert (out / "report.json").read_text() == "second patient"


def test_concurrent_runs_into_one_folder_never_mix(tmp_path):
    from SculptorGANLib.io.atomic import MARKER

    out = tmp_path / "out"
    errors: list[BaseException] = []

    def write(patient: str, names: tuple[str, ...]) -> None:
        try:
            for _ in range(20):
                with staged_output_dir(out) as stage:
                    for name in names:
                        (stage / name).write_text(patient)
                    time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=("A", ("a.stl", "report.json"))),
               threading.Thread(target=write, args=("B", ("b.stl", "tumor.stl", "report.json")))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    contents = {p.name: p.read_text() for p in out.iterdir() if p.name != MARKER}
    assert len(set(contents.values())) == 1, contents  # one patient's complete set, nothing of the other
    assert set(contents) in ({"a.stl", "report.json"}, {"b.stl", "tumor.stl", "report.json"})
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ----------------------------------------------------------------------------- item 5: user files are never touched
def test_user_folder_is_refused_unless_overwrite(tmp_path, capsys):
    from SculptorGANLib.io.atomic import is_result_folder

    ct = _ct(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    (out / "report.json").mkdir(parents=True)
    (out / "report.json" / "my_notes.txt").write_text("precious")
    code, text = _run(capsys, "run", ct, "--out", out, *FAST)
    assert code == 2 and "not a SculptorGAN result folder" in text and "--overwrite" in text
    assert (out / "report.json" / "my_notes.txt").read_text() == "precious"
    code, text = _run(capsys, "run", ct, "--out", out, "--overwrite", *FAST)
    assert code == 0 and is_result_folder(out) and (out / "report.json").is_file()


def test_user_file_added_to_a_result_folder_is_kept(tmp_path, capsys):
    ct = _ct(tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    assert _run(capsys, "run", ct, "--out", out, *FAST)[0] == 0
    (out / "surgeon_notes.txt").write_text("keep me")
    code, text = _run(capsys, "run", ct, "--out", out, *FAST)
    assert code == 2 and "surgeon_notes.txt" in text and (out / "surgeon_notes.txt").read_text() == "keep me"
    assert _run(capsys, "run", ct, "--out", out, *FAST)[0] == 2  # still refused, nothing changed


def test_evaluate_never_overwrites_a_users_summary(tmp_path, capsys):
    from SculptorGANLib.core.volume import LabelVolume
    from SculptorGANLib.io.atomic import is_result_folder

    array = np.zeros((6, 16, 16), np.uint8)
    array[2:4, 4:10, 4:10] = 1
    gt = write_volume(LabelVolume(array), tmp_path / "gt.nii.gz")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "summary.md").write_text("my thesis summary")
    code, text = _run(capsys, "evaluate", gt, gt, "--out", tmp_path / "ev")
    assert code == 2 and "not a SculptorGAN result folder" in text
    assert (tmp_path / "ev" / "summary.md").read_text() == "my thesis summary"
    code, _ = _run(capsys, "evaluate", gt, gt, "--out", tmp_path / "ev2")
    assert code == 0 and is_result_folder(tmp_path / "ev2")
    code, _ = _run(capsys, "evaluate", gt, gt, "--out", tmp_path / "ev2")
    assert code == 0  # our own evaluation folder is replaced


def test_evaluate_on_a_full_disk_leaves_nothing(tmp_path, capsys):
    from SculptorGANLib.core.volume import LabelVolume

    array = np.zeros((6, 16, 16), np.uint8)
    array[2:4, 4:10, 4:10] = 1
    gt = write_volume(LabelVolume(array), tmp_path / "gt.nii.gz")
    with _file_size_limit(2000):
        code, text = _run(capsys, "evaluate", gt, gt, "--out", tmp_path / "ev")
    assert code == 2 and "ev" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.nii.gz"]


# ----------------------------------------------------------------------------- item 6: SIGTERM cleans up
def test_sigterm_leaves_no_staging_and_stale_ones_are_removed(tmp_path):
    ct = _ct(tmp_path / "ct.nii.gz")
    stale = tmp_path / ".out.partial-999999-0123abcd"  # left by a process that was SIGKILLed
    stale.mkdir()
    script = ("import sys, time\n"
              "from SculptorGANLib.io.atomic import staged_output_dir\n"
              "from SculptorGANLib.cli.common import install_signal_handlers\n"
              "install_signal_handlers()\n"
              f"with staged_output_dir({str(tmp_path / 'out')!r}) as stage:\n"
              "    (stage / 'half.nii.gz').write_text('x')\n"
              "    print('staged', flush=True)\n"
              "    time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "staged"
    assert not stale.exists()  # the dead process's staging folder went when the new one was made
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_staging_of_a_zombie_or_live_process_is_judged_by_one_check(tmp_path):
    from SculptorGANLib.core.processes import process_alive
    from SculptorGANLib.io.atomic import remove_stale_staging

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while process_alive(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.05)
    assert not process_alive(child.pid) and process_alive(os.getpid())
    zombie = tmp_path / f".out.partial-{child.pid}-0123abcd"
    ours = tmp_path / f".out.partial-{os.getpid()}-0123abcd"
    zombie.mkdir()
    ours.mkdir()
    remove_stale_staging(tmp_path)
    assert not zombie.exists() and ours.exists()  # a zombie writes nothing more; this process still may
    child.wait()
