"""All-or-nothing output: write into a hidden staging file or folder, move into place only when complete.

The one home of atomic writes: :func:`atomic_path` / :func:`atomic_write_text` for single files (records,
checkpoints, summaries), :func:`staged_output_file` and :func:`staged_output_dir` for user-facing outputs.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from ..core.errors import InputError, OutputError
from .volumes import volume_suffix


def check_output_dir(out_dir: Path) -> None:
    """Fail early, with a clear message, when ``out_dir`` cannot become an output folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is a file; the output must be a folder")
    parent = out_dir if out_dir.exists() else next(p for p in out_dir.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: no permission to write in {parent}")


def check_not_input(output: Path, *inputs: Path) -> None:
    """Refuse to write over any of the user's inputs."""
    for source in inputs:
        if source is not None and source.exists() and output.exists() and output.resolve() == source.resolve():
            raise InputError(f"{output}: is also the input; choose another output so the input stays untouched")


@contextlib.contextmanager
def staged_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success its files are moved into ``out_dir``, on error it is removed."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.absolute().parent))
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot be created ({exc.strerror})") from None
    try:
        yield staging
        out_dir.mkdir(exist_ok=True)
        for item in staging.iterdir():
            target = out_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except PermissionError as exc:
        raise OutputError(f"{out_dir}: no permission to write ({exc.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); it replaces ``path`` only on success."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; an output file name is needed")
    check_output_dir(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = volume_suffix(path) or path.suffix
    tmp = path.parent / f".{path.name[:len(path.name) - len(suffix)]}.partial-{os.getpid()}{suffix}"
    try:
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
