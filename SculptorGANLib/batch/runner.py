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

import json
import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable
import os

from ..core.errors import CancelledError, SculptorGANError
from ..io.atomic import atomic_write_text
from .cases import Case, avoid_output_collisions, discover_cases
from .ranks import _Group, _rank_device, resolve_rank, shard
from .records import STATUS_DIR, SUMMARY_NAME, BatchSummary, _read_record, _status_path, is_finished, \
    summary_rows, write_summary

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) if str(exc).strip() else ""
    if isinstance(exc, SculptorGANError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:400] if text else type(exc).__name__


def process_case(case: Case, out_dir: Path, options, output_options=None, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None, allow_large: bool = False) -> dict:
    """Run the pipeline on one case into ``out_dir/<case>``; returns its record (never raises for a bad case)."""
    from ..io.preflight import read_checked
    from ..pipeline import run_pipeline
    from ..outputs.results import write_results

    record: dict[str, Any] = {"case": case.case_id, "input": case.source, "output": "", "device": options.device}
    started = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    try:
        t = time.perf_counter()
        ct = read_checked(case.source, options, allow_large=allow_large)
        timings["read"] = round(time.perf_counter() - t, 3)
        other = ct.meta.get("other_series")
        if other:
            notes.append(f"DICOM folder holds {len(other) + 1} series; used {ct.meta['series_instance_uid']}")
        result = run_pipeline(ct, options, progress=progress, cancel=cancel)
        timings.update(result.timings)
        t = time.perf_counter()
        report_path = write_results(result, out_dir / case.case_id, source=case.source, options=output_options,
                                    inputs=[case.source])
        timings["write"] = round(time.perf_counter() - t, 3)
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
        used = sorted({str(d) for d in (report.get("device") or {}).values()})
        notes += [f"{stage}: {note}" for stage, info in (report.get("methods") or {}).items()
                  for note in (info.get("notes") or [])]
        record.update(status="ok", reason="", output=str(out_dir / case.case_id), volumes_ml=report.get("volumes_ml", {}),
                      device=",".join(used) or options.device)
    except (CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a failing case is recorded and never stops the others
        log.debug("case %s failed", case.case_id, exc_info=True)
        record.update(status="failed", reason=_one_line(exc), volumes_ml={})
    record["notes"] = notes
    record["timings_s"] = timings
    record["seconds_total"] = round(time.perf_counter() - started, 3)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


def run_batch(inputs, out_dir: str | os.PathLike, options=None, device: str | None = None,
              progress: ProgressFn | None = None, rank: int | None = None, world_size: int | None = None,
              output_options=None, force: bool = False, cancel: Callable[[], bool] | None = None,
              allow_large: bool = False) -> BatchSummary:
    """Run the pipeline over every case in ``inputs`` into ``out_dir/<case>/``.

    Args:
        inputs: folder, CSV list, volume file, or a list of them (see :func:`discover_cases`).
        out_dir: the cohort output folder (shared storage when several machines take part).
        options: :class:`~SculptorGANLib.pipeline.PipelineOptions` for every case.
        device: overrides ``options.device``; under torchrun 'auto'/'cuda' means this rank's GPU.
        progress: ``progress(fraction, message)`` over the whole cohort (on rank 0: all ranks' cases).
        rank, world_size: this process's shard; default from torchrun's environment, else (0, 1).
        output_options: :class:`~SculptorGANLib.outputs.results.OutputOptions` (mesh format, RAS, preview...).
        force: redo cases that an earlier run finished.
        cancel: ``cancel()`` returning True stops after the running case's current stage.
        allow_large: lift the size limits (see :mod:`SculptorGANLib.io.limits`) for every case.
    Returns:
        :class:`BatchSummary`; ``summary.csv`` is written in ``out_dir``.
    """
    from ..io.atomic import check_output_dir
    from ..core.options import PipelineOptions

    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    options = options or PipelineOptions()
    rank, world_size = resolve_rank(rank, world_size)
    options = replace(options, device=_rank_device(device or options.device, world_size))
    if options.device != "auto":  # 'cuda' without a GPU fails here, once, as `run` does, not in every case
        from ..core.device import resolve_device

        resolve_device(options.device)
    cases = avoid_output_collisions(discover_cases(inputs, exclude=out_dir), out_dir)
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
                atomic_write_text(_status_path(out_dir, case), json.dumps(record, indent=1))
            else:
                base = overall_done()

                def case_progress(fraction: float, message: str = "", _base=base, _case=case) -> None:
                    if progress:
                        progress(min((_base + fraction) / max(total, 1), 1.0), f"{_case.case_id}: {message}")

                record = process_case(case, out_dir, options, output_options, case_progress, cancel, allow_large)
                record.update(run=token, this_run="processed", rank=rank)
                atomic_write_text(_status_path(out_dir, case), json.dumps(record, indent=1))
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
