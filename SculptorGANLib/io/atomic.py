"""All-or-nothing output: write into a hidden staging file or folder, move into place only when complete.

The one home of atomic writes: :func:`atomic_path` / :func:`atomic_write_text` for single files (records,
checkpoints, summaries), :func:`staged_output_file` and :func:`staged_output_dir` for user-facing outputs.

A result folder is replaced as a whole (never merged with an earlier run's files): the new folder is built
beside it, then swapped in under a lock on the parent folder, so concurrent runs into one ``--out`` never
mix (the last to finish wins, complete). Each result folder holds a small marker (:data:`MARKER`) listing
the files we wrote; a folder without it that is not empty, or one holding files we did not write, is the
user's and is refused unless ``overwrite`` is asked for. Outputs that are, contain or lie inside an input
are refused. Staging folders of processes that died (SIGKILL, power loss) are removed by the next run.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..core.errors import InputError, OutputError, SculptorGANError
from ..core.processes import process_alive
from .volumes import volume_suffix

#: Marker file of every result folder we write (JSON: tool, kind, the files written).
MARKER = ".sculptorgan-output.json"
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)-[0-9a-f]{8}(?:\..*)?$")


# ----------------------------------------------------------------------------- checks
def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(out_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Fail early, with a clear message, when ``out_dir`` cannot become an output folder; returns it."""
    if str(out_dir).strip() == "":
        raise OutputError("the output folder name is empty; give a folder with --out")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is a file; the output must be a folder")
    parent = out_dir if out_dir.exists() else next(p for p in out_dir.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: no permission to write in {parent}")
    check_not_input(out_dir, *inputs)
    return out_dir


def check_not_input(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse an output that is an input, holds an input (its folder) or lies inside an input folder."""
    if str(output).strip() == "":
        raise OutputError("the output name is empty")
    out = _resolved(Path(output))
    for source in inputs:
        if source is None or str(source) == "":
            continue
        src = _resolved(Path(source))
        if out == src:
            raise InputError(f"{output}: is also the input; choose another output so the input stays untouched")
        if _is_within(src, out):
            raise InputError(f"{output}: holds the input {source}; choose another output folder so the input "
                             "stays untouched")
        if src.is_dir() and _is_within(out, src):
            raise InputError(f"{output}: lies inside the input folder {source}; choose an output outside it")


def read_marker(folder: Path) -> dict | None:
    """The marker of a result folder we wrote, or None (legacy run folders: their report.json counts)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and data.get("tool") == "sculptorgan" else None
    except (OSError, ValueError):
        pass
    try:  # a run folder written before markers existed: report.json lists its files
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        if isinstance(report, dict) and "software" in report and isinstance(report.get("outputs"), list):
            return {"tool": "sculptorgan", "kind": "run", "files": list(report["outputs"])}
    except (OSError, ValueError):
        pass
    try:  # an evaluation folder written before markers existed
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        if isinstance(summary, dict) and "cases" in summary and "name" in summary:
            return {"tool": "sculptorgan", "kind": "evaluation", "files": [
                "per_case.csv", "per_case.json", "summary.json", "summary.md", "boxplot_kidney.png", "boxplot_tumor.png"]}
    except (OSError, ValueError):
        pass
    return None


def is_result_folder(folder: Path) -> bool:
    """True for a folder one of our commands wrote (replacing it loses nothing of the user's)."""
    return folder.is_dir() and read_marker(folder) is not None


def check_replaceable(out_dir: Path, overwrite: bool = False) -> None:
    """Refuse to replace a folder holding anything we did not write, unless ``overwrite`` (looked at under
    the parent's lock, so a concurrent run's swap is never seen half-way)."""
    out_dir = Path(out_dir)
    if overwrite or not out_dir.is_dir():
        return
    with _locked_dir(out_dir.absolute().parent):
        _check_replaceable(out_dir)


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.is_dir():
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    marker = read_marker(out_dir)
    if marker is None:
        raise OutputError(f"{out_dir}: exists and is not a SculptorGAN result folder ({len(entries)} item(s), e.g. "
                          f"{entries[0]!r}); choose a new or empty folder, or give --overwrite to replace it")
    ours = set(marker.get("files") or []) | {MARKER}
    foreign = [name for name in entries if name not in ours]
    if foreign:
        raise OutputError(f"{out_dir}: holds {len(foreign)} item(s) SculptorGAN did not write (e.g. {foreign[0]!r}); "
                          "move them away, choose another folder, or give --overwrite to replace the folder")


# ----------------------------------------------------------------------------- stale staging
def remove_stale_staging(parent: Path, name: str | None = None) -> list[Path]:
    """Remove staging files/folders in ``parent`` (of ``name`` only, if given) left by dead processes."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if not match or (name is not None and match["name"] != name) or process_alive(int(match["pid"])):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _staging_name(name: str, kind: str = "partial", suffix: str = "") -> str:
    return f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


@contextlib.contextmanager
def _locked_dir(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` itself (no lock file is left behind); a no-op where unsupported."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _final_names_in_errors(tmp: Path, final: Path) -> Iterator[None]:
    """Re-raise a :class:`SculptorGANError` from the block with the temporary path replaced by the final one
    (users never see staging names)."""
    try:
        yield
    except SculptorGANError as exc:
        text = str(exc)
        if str(tmp) not in text and tmp.name not in text:
            raise
        raise type(exc)(text.replace(str(tmp), str(final)).replace(tmp.name, final.name)) from None


# ----------------------------------------------------------------------------- folders
@contextlib.contextmanager
def staged_output_dir(out_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = (),
                      overwrite: bool = False, kind: str = "run") -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``out_dir`` as a whole, on error it is removed.

    ``inputs`` are never overwritten or swallowed (see :func:`check_not_input`); a non-empty ``out_dir`` that
    is not a result folder of ours is refused unless ``overwrite`` (see :func:`check_replaceable`).
    """
    out_dir = check_output_dir(out_dir, inputs)
    check_replaceable(out_dir, overwrite)
    parent = out_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(parent, out_dir.name)
        staging = parent / _staging_name(out_dir.name)
        staging.mkdir()
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot be created ({exc.strerror})") from None
    try:
        with _final_names_in_errors(staging, out_dir):
            yield staging
        files = sorted(p.name for p in staging.iterdir())
        (staging / MARKER).write_text(json.dumps({"tool": "sculptorgan", "kind": kind, "files": files}, indent=1)
                                      + "\n", encoding="utf-8")
        _swap_in(staging, out_dir, overwrite)
    except PermissionError as exc:
        raise OutputError(f"{out_dir}: no permission to write ({exc.strerror})") from None
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot be written ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Replace ``out_dir`` by ``staging`` under a lock on the parent (concurrent runs never mix)."""
    parent = out_dir.absolute().parent
    old = parent / _staging_name(out_dir.name, "old")
    with _locked_dir(parent):
        if not overwrite:
            _check_replaceable(out_dir)  # again: another process may have written meanwhile
        if out_dir.exists():
            os.rename(out_dir, old)
        try:
            os.rename(staging, out_dir)
        except OSError:
            if old.exists():
                os.rename(old, out_dir)
            raise
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- files
@contextlib.contextmanager
def staged_output_file(path: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); it replaces ``path`` only on success."""
    if str(path).strip() == "":
        raise OutputError("the output file name is empty")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; an output file name is needed")
    check_output_dir(path.parent)
    check_not_input(path, *inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = volume_suffix(path) or path.suffix
    remove_stale_staging(path.parent, path.name[:len(path.name) - len(suffix)])
    tmp = path.parent / _staging_name(path.name[:len(path.name) - len(suffix)], suffix=suffix)
    try:
        with _final_names_in_errors(tmp, path):
            yield tmp
        os.replace(tmp, path)
    except PermissionError as exc:
        raise OutputError(f"{path}: no permission to write ({exc.strerror})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; it replaces ``path`` only when the block succeeds
    (readers never see a half-written file; concurrent writers each use their own temporary name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
