"""The cases of a cohort: a folder of volumes / DICOM series, a CSV list, or single files, in a fixed order."""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..core.errors import InputError

#: CSV header names accepted for the input path and the (optional) case id.
_PATH_COLUMNS = ("path", "input", "file", "image", "ct", "source")
_ID_COLUMNS = ("case", "case_id", "id", "name")


@dataclass(frozen=True)
class Case:
    """One input of a cohort: a volume file or a DICOM series folder, and the name of its output folder."""

    case_id: str
    source: str


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _unique_ids(pairs: Iterable[tuple[str, str]]) -> list[Case]:
    cases, seen = [], set()
    for case_id, source in pairs:
        base, n = _safe_id(case_id), 1
        case_id = base
        while case_id in seen:
            n += 1
            case_id = f"{base}__{n}"
        seen.add(case_id)
        cases.append(Case(case_id, source))
    return cases


def _is_volume_file(path: Path) -> bool:
    from ..io.volumes import VOLUME_SUFFIXES, volume_suffix

    return path.is_file() and volume_suffix(path) in VOLUME_SUFFIXES


def _cases_from_csv(path: Path) -> list[Case]:
    from ..io.volumes import stem

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as a CSV list ({exc})") from None
    if not rows:
        raise InputError(f"{path}: the CSV list is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    path_col = next((header.index(name) for name in _PATH_COLUMNS if name in header), None)
    if path_col is not None:
        id_col = next((header.index(name) for name in _ID_COLUMNS if name in header), None)
        rows = rows[1:]
    else:  # no header: first column is the path
        path_col, id_col = 0, None
    pairs = []
    for number, row in enumerate(rows, start=1):
        if path_col >= len(row) or not row[path_col].strip():
            raise InputError(f"{path}: data row {number} has no input path")
        source = Path(row[path_col].strip()).expanduser()
        if not source.is_absolute():
            source = path.parent / source
        case_id = row[id_col].strip() if id_col is not None and id_col < len(row) and row[id_col].strip() \
            else (stem(source) if source.suffix or not source.is_dir() else source.name)
        pairs.append((case_id, str(source)))
    return _unique_ids(pairs)


def discover_cases(inputs: str | os.PathLike | Sequence[str | os.PathLike], exclude: Path | None = None) -> list[Case]:
    """The cases in ``inputs``, in a fixed (sorted / listed) order.

    ``inputs`` is a CSV list (a column ``path`` and optionally ``case``; or no header and paths in the
    first column; relative paths are relative to the CSV), a folder (every volume file in it and every
    sub-folder as a DICOM series; a folder holding only DICOM files is one series), a single volume
    file, or a list of any of these paths. ``exclude`` (the output folder) is never taken as a case.
    """
    from ..io.volumes import VOLUME_SUFFIXES, stem, volume_suffix

    if isinstance(inputs, (list, tuple)):
        pairs = [(c.case_id, c.source) for item in inputs for c in discover_cases(item, exclude)]
        return _unique_ids(pairs)
    path = Path(inputs).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv", ".txt"):
            return _cases_from_csv(path)
        return _unique_ids([(stem(path), str(path))])
    excluded = exclude.resolve() if exclude is not None and exclude.exists() else None
    from ..io.atomic import is_result_folder

    entries = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                     and (excluded is None or p.resolve() != excluded)
                     and not (p.is_dir() and is_result_folder(p)))  # an earlier batch's case folders are no input
    volumes = [p for p in entries if _is_volume_file(p) and volume_suffix(p) != ".seg.nrrd"]
    series = [p for p in entries if p.is_dir() and any(not q.name.startswith(".") for q in p.iterdir())]
    if not volumes and not series:
        if any(p.is_file() for p in entries):  # the folder itself is one DICOM series
            return _unique_ids([(path.name, str(path))])
        raise InputError(f"{path}: contains no volumes ({', '.join(VOLUME_SUFFIXES)}) or DICOM series folders")
    pairs = [(stem(p), str(p)) for p in volumes] + [(p.name, str(p)) for p in series]
    pairs.sort(key=lambda pair: pair[1])
    return _unique_ids(pairs)


#: Names in the cohort output folder that belong to the batch itself, never to a case.
RESERVED_NAMES = ("summary.csv", ".status")


def avoid_output_collisions(cases: Sequence[Case], out_dir: Path) -> list[Case]:
    """The cases, renamed where ``out_dir/<case>`` would hit the batch's own files or something that is not
    a case result (an input, a user's file): ``summary.csv`` becomes ``summary.csv__case`` and so on."""
    from ..io.atomic import is_result_folder

    taken = {c.case_id for c in cases}
    out = []
    for case in cases:
        case_id = case.case_id
        while case_id in RESERVED_NAMES or ((out_dir / case_id).exists() and not is_result_folder(out_dir / case_id)):
            case_id = f"{case_id}__case"
            while case_id in taken:
                case_id = f"{case_id}_"
        taken.add(case_id)
        out.append(Case(case_id, case.source) if case_id != case.case_id else case)
    return out
