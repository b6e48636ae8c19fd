"""Per-case status records (``OUT/.status/<case>.json``) and ``summary.csv``, shared by all ranks."""
from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..io.atomic import atomic_path
from .cases import Case

STATUS_DIR = ".status"
SUMMARY_NAME = "summary.csv"
_FIXED_COLUMNS = ("case", "status", "reason", "notes", "input", "output", "rank", "device", "finished_at", "seconds_total",
                  "seconds_read")


def _status_path(out_dir: Path, case: Case) -> Path:
    return out_dir / STATUS_DIR / f"{case.case_id}.json"


def _read_record(out_dir: Path, case: Case) -> dict | None:
    try:
        return json.loads(_status_path(out_dir, case).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(out_dir: Path, case: Case) -> bool:
    """True when an earlier run finished ``case`` (status ok and its report.json in place)."""
    record = _read_record(out_dir, case)
    return bool(record and record.get("status") == "ok" and (out_dir / case.case_id / "report.json").is_file())




def summary_rows(cases: Sequence[Case], out_dir: Path) -> list[dict]:
    """One flat row per case from the status records (cases without a record are 'pending')."""
    rows = []
    for case in cases:
        record = _read_record(out_dir, case) or {"case": case.case_id, "input": case.source, "status": "pending"}
        row = {key: record.get(key, "") for key in _FIXED_COLUMNS}
        row["case"], row["input"] = case.case_id, case.source
        row["notes"] = "; ".join(record.get("notes") or [])
        if record.get("status") == "ok":
            row["output"] = str(out_dir / case.case_id)
        for stage, seconds in (record.get("timings_s") or {}).items():
            row[f"seconds_{stage}"] = seconds
        for name, ml in (record.get("volumes_ml") or {}).items():
            row[f"volume_{name}_ml"] = ml
        if record.get("this_run") == "skipped":
            row["status"] = "skipped"
            row["reason"] = "finished in an earlier run"
        rows.append(row)
    stages = sorted({k for r in rows for k in r if k.startswith("seconds_") and k not in _FIXED_COLUMNS})
    volumes = sorted({k for r in rows for k in r if k.startswith("volume_")})
    columns = list(_FIXED_COLUMNS) + stages + volumes
    return [{key: row.get(key, "") for key in columns} for row in rows]


def write_summary(cases: Sequence[Case], out_dir: Path) -> Path:
    """(Re)write ``summary.csv`` from the status records, under a lock shared by all ranks."""
    path = out_dir / SUMMARY_NAME
    with _locked(out_dir / STATUS_DIR / ".lock"):
        rows = summary_rows(cases, out_dir)
        columns = list(rows[0]) if rows else list(_FIXED_COLUMNS)
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return path


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: single process is the common case there
            pass
        yield


@dataclass
class BatchSummary:
    """What a batch did: one row per case (all ranks' cases once the batch is complete)."""

    rows: list[dict]
    summary_csv: Path
    rank: int = 0
    world_size: int = 1
    processed: list[str] = field(default_factory=list)  # case ids this process ran (not skipped)

    def count(self, status: str) -> int:
        return sum(1 for row in self.rows if row["status"] == status)

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["status"] == "failed"]

    def line(self) -> str:
        counts = ", ".join(f"{self.count(s)} {s}" for s in ("ok", "skipped", "failed", "pending") if self.count(s))
        return f"{len(self.rows)} case(s): {counts}; summary: {self.summary_csv}"
