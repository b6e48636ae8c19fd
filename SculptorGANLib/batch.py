"""Cohort processing: the pipeline over a folder of volumes / DICOM series or a CSV list.

Each case is written (atomically) into ``OUT/<case>/`` exactly as ``sculptorgan run`` writes one
case. Beside them:

* ``OUT/.status/<case>.json`` - one small record per case (status, reason, timings, volumes), written
  when the case ends; a case whose record says ``ok`` and whose ``report.json`` exists is skipped on a
  rerun, a failed case is tried again;
* ``OUT/summary.csv`` - one row per case (status, reason, timings, volumes), rewritten under a file
  lock by every process when it finishes, so the last one to finish leaves the complete table.

A failing case (unreadable file, bad geometry, a crash inside a stage) is recorded with its one-line
reason and never stops the others; only a user cancel (``CancelledError``) or Ctrl-C stops the batch.

Scale-out uses PyTorch's own launcher: under ``torchrun --nproc_per_node=N`` (or multi-node) the cases,
in a fixed order, are sharded by rank (``cases[rank::world_size]``), each rank runs on its own GPU
(``cuda:LOCAL_RANK``) and the outputs are the same files a single process writes. A gloo process
group carries the progress token and the final barrier. The output folder must be on storage all
ranks share.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .errors import CancelledError, InputError, SculptorGANError

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
STATUS_DIR = ".status"
SUMMARY_NAME = "summary.csv"
#: CSV header names accepted for the input path and the (optional) case id.
_PATH_COLUMNS = ("path", "input", "file", "image", "ct", "source")
_ID_COLUMNS = ("case", "case_id", "id", "name")
_FIXED_COLUMNS = ("case", "status", "reason", "input", "output", "rank", "device", "finished_at", "seconds_total",
                  "seconds_read")


# ----------------------------------------------------------------------------- finding the cases
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
    from .io import VOLUME_SUFFIXES, volume_suffix

    return path.is_file() and volume_suffix(path) in VOLUME_SUFFIXES


def _cases_from_csv(path: Path) -> list[Case]:
    from .io import stem

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
    from .io import VOLUME_SUFFIXES, stem, volume_suffix

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
    entries = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                     and (excluded is None or p.resolve() != excluded))
    volumes = [p for p in entries if _is_volume_file(p) and volume_suffix(p) != ".seg.nrrd"]
    series = [p for p in entries if p.is_dir() and any(not q.name.startswith(".") for q in p.iterdir())]
    if not volumes and not series:
        if any(p.is_file() for p in entries):  # the folder itself is one DICOM series
            return _unique_ids([(path.name, str(path))])
        raise InputError(f"{path}: contains no volumes ({', '.join(VOLUME_SUFFIXES)}) or DICOM series folders")
    pairs = [(stem(p), str(p)) for p in volumes] + [(p.name, str(p)) for p in series]
    pairs.sort(key=lambda pair: pair[1])
    return _unique_ids(pairs)


# ----------------------------------------------------------------------------- ranks
def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): as given, else from torchrun's environment (RANK, WORLD_SIZE), else (0, 1)."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0")) if world_size > 1 else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise SculptorGANError(f"rank {rank} is not within a world of {world_size} process(es)")
    return rank, world_size


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """The items rank ``rank`` of ``world_size`` handles: every world_size-th, starting at rank."""
    return list(items[rank::world_size])


def _rank_device(device: str, world_size: int) -> str:
    """Under torchrun each rank takes its own GPU (cuda:LOCAL_RANK) when CUDA is wanted and present."""
    if world_size <= 1 or device not in ("auto", "cuda"):
        return device
    try:
        import torch

        if torch.cuda.is_available():
            index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
            torch.cuda.set_device(index)
            return f"cuda:{index}"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return device


class _Group:
    """The torch.distributed (gloo) group when launched by torchrun; no-ops otherwise."""

    def __init__(self, world_size: int):
        self.dist = None
        self.created = False
        if world_size <= 1 or "MASTER_ADDR" not in os.environ:
            return
        import torch.distributed as dist

        if not dist.is_available():
            return
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) != world_size:
                return  # manual sharding (explicit --rank/--world-size): coordinate through files only
            dist.init_process_group(backend="gloo")
            self.created = True
        self.dist = dist

    def broadcast(self, value: Any) -> Any:
        if self.dist is None:
            return value
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def close(self) -> None:
        if self.created and self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()


# ----------------------------------------------------------------------------- records
def _status_path(out_dir: Path, case: Case) -> Path:
    return out_dir / STATUS_DIR / f"{case.case_id}.json"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_record(out_dir: Path, case: Case) -> dict | None:
    try:
        return json.loads(_status_path(out_dir, case).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(out_dir: Path, case: Case) -> bool:
    """True when an earlier run finished ``case`` (status ok and its report.json in place)."""
    record = _read_record(out_dir, case)
    return bool(record and record.get("status") == "ok" and (out_dir / case.case_id / "report.json").is_file())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) if str(exc).strip() else ""
    if isinstance(exc, SculptorGANError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:400] if text else type(exc).__name__


def process_case(case: Case, out_dir: Path, options, output_options=None, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None) -> dict:
    """Run the pipeline on one case into ``out_dir/<case>``; returns its record (never raises for a bad case)."""
    from .io import read_ct
    from .pipeline import run_pipeline
    from .results import write_results

    record: dict[str, Any] = {"case": case.case_id, "input": case.source, "output": "", "device": options.device}
    started = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        t = time.perf_counter()
        ct = read_ct(case.source)
        timings["read"] = round(time.perf_counter() - t, 3)
        result = run_pipeline(ct, options, progress=progress, cancel=cancel)
        timings.update(result.timings)
        t = time.perf_counter()
        report_path = write_results(result, out_dir / case.case_id, source=case.source, options=output_options)
        timings["write"] = round(time.perf_counter() - t, 3)
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
        used = sorted({str(d) for d in (report.get("device") or {}).values()})
        record.update(status="ok", reason="", output=str(out_dir / case.case_id), volumes_ml=report.get("volumes_ml", {}),
                      device=",".join(used) or options.device)
    except (CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a failing case is recorded and never stops the others
        log.debug("case %s failed", case.case_id, exc_info=True)
        record.update(status="failed", reason=_one_line(exc), volumes_ml={})
    record["timings_s"] = timings
    record["seconds_total"] = round(time.perf_counter() - started, 3)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


# ----------------------------------------------------------------------------- summary
def summary_rows(cases: Sequence[Case], out_dir: Path) -> list[dict]:
    """One flat row per case from the status records (cases without a record are 'pending')."""
    rows = []
    for case in cases:
        record = _read_record(out_dir, case) or {"case": case.case_id, "input": case.source, "status": "pending"}
        row = {key: record.get(key, "") for key in _FIXED_COLUMNS}
        row["case"], row["input"] = case.case_id, case.source
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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
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


# ----------------------------------------------------------------------------- the batch
def run_batch(inputs, out_dir: str | os.PathLike, options=None, device: str | None = None,
              progress: ProgressFn | None = None, rank: int | None = None, world_size: int | None = None,
              output_options=None, force: bool = False, cancel: Callable[[], bool] | None = None) -> BatchSummary:
    """Run the pipeline over every case in ``inputs`` into ``out_dir/<case>/``.

    Args:
        inputs: folder, CSV list, volume file, or a list of them (see :func:`discover_cases`).
        out_dir: the cohort output folder (shared storage when several machines take part).
        options: :class:`~SculptorGANLib.pipeline.PipelineOptions` for every case.
        device: overrides ``options.device``; under torchrun 'auto'/'cuda' means this rank's GPU.
        progress: ``progress(fraction, message)`` over the whole cohort (on rank 0: all ranks' cases).
        rank, world_size: this process's shard; default from torchrun's environment, else (0, 1).
        output_options: :class:`~SculptorGANLib.results.OutputOptions` (mesh format, RAS, preview...).
        force: redo cases that an earlier run finished.
        cancel: ``cancel()`` returning True stops after the running case's current stage.
    Returns:
        :class:`BatchSummary`; ``summary.csv`` is written in ``out_dir``.
    """
    from .output import check_output_dir
    from .pipeline import PipelineOptions

    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    options = options or PipelineOptions()
    rank, world_size = resolve_rank(rank, world_size)
    options = replace(options, device=_rank_device(device or options.device, world_size))
    cases = discover_cases(inputs, exclude=out_dir)
    mine = shard(cases, rank, world_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATUS_DIR).mkdir(exist_ok=True)
    group = _Group(world_size)
    try:
        token = group.broadcast(uuid.uuid4().hex)
        total = len(cases)
        processed: list[str] = []

        def overall_done() -> int:
            """Cases finished in this run (all ranks when distributed, read from the shared records)."""
            if group.dist is None:
                return len(done_here)
            return sum(1 for c in cases if (_read_record(out_dir, c) or {}).get("run") == token)

        done_here: list[str] = []
        for case in mine:
            if cancel is not None and cancel():
                raise CancelledError("cancelled by the user")
            if not force and is_finished(out_dir, case):
                record = _read_record(out_dir, case) or {}
                record.update(run=token, this_run="skipped", rank=rank)
                _atomic_write(_status_path(out_dir, case), json.dumps(record, indent=1))
            else:
                base = overall_done()

                def case_progress(fraction: float, message: str = "", _base=base, _case=case) -> None:
                    if progress:
                        progress(min((_base + fraction) / max(total, 1), 1.0), f"{_case.case_id}: {message}")

                record = process_case(case, out_dir, options, output_options, case_progress, cancel)
                record.update(run=token, this_run="processed", rank=rank)
                _atomic_write(_status_path(out_dir, case), json.dumps(record, indent=1))
                processed.append(case.case_id)
                if record["status"] == "failed":
                    log.info("%s failed: %s", case.case_id, record["reason"])
            done_here.append(case.case_id)
            if progress:
                progress(overall_done() / max(total, 1), f"{case.case_id} done")
        write_summary(cases, out_dir)
        if group.dist is not None and rank == 0 and progress:
            while (n := overall_done()) < total:  # rank 0 keeps the overall bar moving until all ranks end
                progress(n / total, "waiting for the other ranks")
                time.sleep(0.5)
        group.barrier()
        if rank == 0:
            write_summary(cases, out_dir)  # complete, whoever finished last
        group.barrier()
    finally:
        group.close()
    if progress:
        progress(1.0, "done")
    return BatchSummary(summary_rows(cases, out_dir), out_dir / SUMMARY_NAME, rank, world_size, processed)


# ----------------------------------------------------------------------------- the `batch` sub-command
class CaseProgressBar:
    """Overall progress over the cohort in cases, with elapsed time and ETA (tqdm)."""

    def __init__(self, enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(total=1.0, disable=not enabled, file=sys.stderr, leave=False,
                        bar_format="{percentage:3.0f}%|{bar:24}| [{elapsed}<{remaining}] {desc}")

    def __call__(self, fraction: float, message: str = "") -> None:
        target = min(max(fraction, 0.0), 1.0)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        if message:
            self.bar.set_description_str(message[:60].ljust(60), refresh=True)

    def close(self) -> None:
        self.bar.close()


def cmd_batch(args) -> int:
    from .cli import _pipeline_options
    from .results import OutputOptions

    options = _pipeline_options(args, args.steps)
    output_options = OutputOptions(mesh_format=args.mesh_format, ras=args.ras, write_nrrd=args.nrrd,
                                   preview=not args.no_preview)
    rank, world_size = resolve_rank(args.rank, args.world_size)
    bar = CaseProgressBar(enabled=not args.quiet and rank == 0)
    try:
        summary = run_batch(args.inputs, args.out, options, progress=bar, rank=rank, world_size=world_size,
                            output_options=output_options, force=args.force)
    finally:
        bar.close()
    if rank == 0:
        print(summary.line())
        for row in summary.failed:
            print(f"  failed: {row['case']}: {row['reason']}", file=sys.stderr)
    # Exit 3 flags failed cases to scripts; under torchrun a non-zero exit would make the launcher treat
    # the whole job as crashed (and restart it), so there every rank exits 0 and summary.csv tells.
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    return 3 if summary.failed and not under_torchrun else 0


def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sculptorgan batch INPUTS --out DIR`` on the CLI's sub-parsers (sets its own ``func``)."""
    from .cli import _add_common, _add_device, _add_grid, _add_mesh, _add_segmentation, _steps

    p = subparsers.add_parser(
        "batch", help="run the pipeline over a cohort (folder of volumes / DICOM series, or a CSV list)",
        description="Each case goes into OUT/<case>/ like `sculptorgan run`; OUT/summary.csv lists status, "
                    "reason, timings and volumes. Finished cases are skipped on a rerun; a failing case is "
                    "recorded and the others go on (exit code 3 when any failed; 0 under torchrun). Under "
                    "`torchrun --nproc_per_node=N -m SculptorGANLib batch ...` the cases are sharded by rank.")
    p.add_argument("inputs", nargs="+", help="folder of volumes / DICOM series folders, CSV list (column 'path', "
                                             "optional 'case'), or volume files")
    p.add_argument("--out", required=True, help="cohort output folder (one sub-folder per case)")
    p.add_argument("--steps", type=_steps, default=("interpolate", "segment", "surfaces"),
                   help="comma-separated steps: interpolate,segment,surfaces (default: all)")
    _add_segmentation(p)
    _add_grid(p, missing=False)
    p.add_argument("--nrrd", action="store_true", help="also write each CT as .nrrd")
    p.add_argument("--no-preview", action="store_true", help="skip the PNG preview of each case")
    p.add_argument("--force", action="store_true", help="redo cases an earlier run finished")
    p.add_argument("--rank", type=int, help="this process's shard (default: torchrun's RANK, else 0)")
    p.add_argument("--world-size", type=int, help="number of shards (default: torchrun's WORLD_SIZE, else 1)")
    _add_mesh(p), _add_device(p), _add_common(p)
    p.set_defaults(func=cmd_batch)
    return p



def main(argv: Sequence[str] | None = None) -> int:
    """``python -m SculptorGANLib.batch INPUTS --out DIR`` - the same as ``sculptorgan batch``."""
    parser = argparse.ArgumentParser(prog="sculptorgan")
    add_batch_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["batch", *(sys.argv[1:] if argv is None else argv)])
    from .cli import run_parsed

    return run_parsed(args)


if __name__ == "__main__":
    sys.exit(main())
