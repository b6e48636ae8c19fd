"""The pipeline as a subprocess for 3D Slicer: ``PythonSlicer -m SculptorGANLib.slicer_worker``.

Slicer writes the input CT to a file, starts this worker and keeps its GUI responsive while it runs.
The worker speaks a line protocol on stdout: every line that starts with :data:`PREFIX` carries one
JSON event, anything else is ordinary log output::

    @@SCULPTORGAN {"event": "start", "pid": 1234, "version": "0.1.0"}
    @@SCULPTORGAN {"event": "progress", "fraction": 0.42, "message": "segment…"}
    @@SCULPTORGAN {"event": "done", "manifest": "/tmp/x/manifest.json"}
    @@SCULPTORGAN {"event": "error", "kind": "cancelled", "message": "cancelled by the user"}

With ``--cancel-on-stdin`` a line ``cancel`` on stdin (or stdin closing, e.g. because Slicer went
away) stops the run at the next check. Outputs appear in ``--output`` only when the run succeeds:
they are written to a staging folder first and ``manifest.json`` is written last, so a cancelled or
failed run leaves nothing that could be half-loaded. Exit codes are in :data:`EXIT_CODES`.

:func:`run_request` is the same work without files or processes; the Slicer module's synchronous
path (Python console, tests) calls it directly.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

PREFIX = "@@SCULPTORGAN "
#: Why the worker stopped (exit status → kind of error shown to the user).
EXIT_CODES: dict[str, int] = {
    "ok": 0, "error": 1, "input": 2, "cancelled": 3, "out_of_memory": 4, "missing_dependency": 5, "no_gpu": 6,
}
#: Label values of the structure labelmap handed to Slicer (one segment per structure).
STRUCTURE_VALUES: dict[str, int] = {"kidney_left": 1, "kidney_right": 2, "tumor": 3}
#: Pipeline steps the worker runs; 3D models are made by Slicer itself (closed-surface representation).
WORKER_STEPS = ("interpolate", "segment")
MANIFEST = "manifest.json"


@dataclass
class WorkerOutputs:
    """What one run produced: the (possibly interpolated) CT and the per-structure labelmap."""

    ct: Any                      # CTVolume on the output grid
    interpolated: bool           # False when the CT is the input unchanged
    structures: Any = None       # LabelVolume with STRUCTURE_VALUES (+ further labels), or None
    info: dict = field(default_factory=dict)


def pipeline_options(request: dict):
    """:class:`PipelineOptions` from a request dict (keys as in :func:`build_parser`)."""
    from .pipeline import PipelineOptions

    steps = tuple(s for s in request.get("steps", WORKER_STEPS) if s in WORKER_STEPS)
    return PipelineOptions(steps=steps, factor=request.get("factor"), target_spacing=request.get("target_spacing"),
                           fill_missing=request.get("fill_missing", True),
                           interpolation_method=request.get("interpolation_method"),
                           segmentation_model=request.get("model") or None, device=request.get("device", "auto"))


def structure_labels(labels, ct_array=None):
    """LabelVolume with one fixed value per structure: kidney_left 1, kidney_right 2, tumor 3, others after."""
    import numpy as np

    from .core.anatomy import split_structures
    from .core.volume import LabelVolume

    masks = split_structures(labels, ct_array)
    array = np.zeros(labels.shape, np.uint8)
    names = dict((v, k) for k, v in STRUCTURE_VALUES.items())
    next_value = max(STRUCTURE_VALUES.values()) + 1
    for name, mask in masks.items():
        value = STRUCTURE_VALUES.get(name)
        if value is None:
            value, next_value = next_value, next_value + 1
            names[value] = name
        array[mask] = value
    return LabelVolume(array, labels.geometry, name=labels.name, labels=names)


def with_missing_slices(ct, indices):
    """``ct`` with the given slices marked as not acquired (``indices``: ints or a "12, 13" string)."""
    from .core.errors import InputError

    try:
        if isinstance(indices, str):
            indices = [int(v) for v in indices.replace(";", ",").replace(" ", ",").split(",") if v.strip()]
        return ct.with_missing(tuple(int(i) for i in indices))
    except (ValueError, InputError):
        raise InputError(f"missing slices {indices!r}: give indices of inner slices 1..{ct.shape[0] - 2}, "
                         "separated by commas") from None


def run_request(ct, request: dict, progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> WorkerOutputs:
    """Run the requested steps on ``ct`` (a CTVolume, never modified)."""
    from .pipeline import run_pipeline

    options = pipeline_options(request)
    result = run_pipeline(ct, options, progress=progress, cancel=cancel)
    structures = None
    if result.labels is not None:
        same = result.ct.same_grid(result.labels)
        structures = structure_labels(result.labels, result.ct.array if same else None)
    info = {"methods": result.methods, "timings_s": result.timings, "steps": list(options.steps)}
    return WorkerOutputs(result.ct, result.ct is not ct, structures, info)


# ----------------------------------------------------------------------------- protocol
def emit(event: str, **fields: Any) -> None:
    """Write one protocol line (flushed at once so the reader sees it live)."""
    sys.stdout.write(PREFIX + json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


def parse_line(line: str) -> dict | None:
    """The event carried by a protocol line, or None for ordinary output."""
    line = line.rstrip("\r\n")
    if not line.startswith(PREFIX):
        return None
    try:
        event = json.loads(line[len(PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class _StdinCancel:
    """Cancel flag set by a ``cancel`` line on stdin or by stdin closing."""

    def __init__(self) -> None:
        self.flag = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        try:
            for line in sys.stdin:
                if line.strip().lower() == "cancel":
                    break
        except (OSError, ValueError):
            pass
        self.flag.set()

    def __call__(self) -> bool:
        return self.flag.is_set()


class _Progress:
    """Forwards progress as protocol lines, at most ~20 per second unless the message changes."""

    def __init__(self) -> None:
        self.last = (-1.0, "", 0.0)

    def __call__(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        previous, previous_message, previous_time = self.last
        if message == previous_message and now - previous_time < 0.05 and fraction < 1.0:
            return
        self.last = (fraction, message, now)
        emit("progress", fraction=round(float(fraction), 4), message=message)


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line message) for an exception raised by a run."""
    from .core.errors import CancelledError, SculptorGANError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, CancelledError):
        return "cancelled", text
    if isinstance(exc, ModuleNotFoundError):
        name = (exc.name or text).split(".")[0]
        return "missing_dependency", f"Python package '{name}' is not installed"
    if isinstance(exc, ImportError):
        return "missing_dependency", text
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "out_of_memory", "out of memory: " + text
    if isinstance(exc, SculptorGANError):
        if "no CUDA GPU" in text or ("device" in text and "not available" in text):
            return "no_gpu", text
        return "input", text
    return "error", f"{type(exc).__name__}: {text}"


# ----------------------------------------------------------------------------- files
def _write_outputs(outputs: WorkerOutputs, out_dir: Path, source: str) -> Path:
    """Write the outputs into ``out_dir`` (staged) and the manifest last; returns the manifest path."""
    from .io.volumes import write_volume

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(out_dir) / ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    manifest: dict[str, Any] = {"version": 1, "source": source, "info": outputs.info, "files": {}}
    try:
        if outputs.interpolated:
            write_volume(outputs.ct, staging / "ct.nrrd", compress=False)
            manifest["files"]["ct"] = "ct.nrrd"
        if outputs.structures is not None:
            write_volume(outputs.structures, staging / "structures.nrrd", compress=False)
            manifest["files"]["structures"] = "structures.nrrd"
            manifest["structures"] = {str(v): n for v, n in sorted(outputs.structures.labels.items())}
        for name in manifest["files"].values():
            os.replace(staging / name, out_dir / name)
        tmp = staging / MANIFEST
        tmp.write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, out_dir / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / MANIFEST


def read_outputs(out_dir: str | os.PathLike) -> tuple[dict, Any, Any]:
    """(manifest, CTVolume or None, structure LabelVolume or None) from a finished worker's folder."""
    from .io.volumes import read_ct, read_labels

    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    files = manifest.get("files", {})
    ct = read_ct(out_dir / files["ct"]) if "ct" in files else None
    structures = None
    if "structures" in files:
        structures = read_labels(out_dir / files["structures"])
        structures.labels = {int(v): n for v, n in manifest.get("structures", {}).items()}
    return manifest, ct, structures


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m SculptorGANLib.slicer_worker",
                                description="SculptorGAN pipeline worker for 3D Slicer (machine-readable progress)")
    p.add_argument("--input", required=True, help="input CT (NRRD/NIfTI/MHA) written by Slicer")
    p.add_argument("--output", required=True, help="folder for the outputs and manifest.json")
    p.add_argument("--steps", default=",".join(WORKER_STEPS), help="comma-separated: interpolate,segment")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--factor", type=int)
    g.add_argument("--target-spacing", type=float)
    p.add_argument("--missing", default="", help="comma-separated indices of missing slices")
    p.add_argument("--no-fill-missing", dest="fill_missing", action="store_false")
    p.add_argument("--interpolation-method", choices=["gan", "linear", "cubic"])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="", help="segmentation model card (.json) or shipped name")
    p.add_argument("--cancel-on-stdin", action="store_true", help="stop on a 'cancel' line or when stdin closes")
    p.add_argument("--test-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow start
    return p


def request_from_args(args: argparse.Namespace) -> dict:
    return {"steps": [s.strip() for s in args.steps.split(",") if s.strip()], "factor": args.factor,
            "target_spacing": args.target_spacing, "fill_missing": args.fill_missing,
            "interpolation_method": args.interpolation_method, "device": args.device, "model": args.model}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cancel = _StdinCancel() if args.cancel_on_stdin else (lambda: False)
    from . import __version__

    emit("start", pid=os.getpid(), version=__version__)
    try:
        from .core.errors import CancelledError
        from .io.volumes import read_ct

        progress = _Progress()
        if args.device.lower().startswith(("cuda", "mps")):  # say "no GPU" now, not after reading the input
            from .core.device import resolve_device

            resolve_device(args.device)
        progress(0.0, "reading input")
        deadline = time.monotonic() + args.test_delay
        while time.monotonic() < deadline:
            if cancel():
                raise CancelledError("cancelled by the user")
            time.sleep(0.02)
        ct = read_ct(args.input)
        if args.missing.strip():
            ct = with_missing_slices(ct, args.missing)
        outputs = run_request(ct, request_from_args(args), progress=progress, cancel=cancel)
        if cancel():
            raise CancelledError("cancelled by the user")
        progress(1.0, "writing results")
        manifest = _write_outputs(outputs, Path(args.output), str(args.input))
    except BaseException as exc:  # noqa: BLE001 — every failure becomes one protocol line and an exit code
        if isinstance(exc, SystemExit):
            raise
        kind, message = ("cancelled", "cancelled by the user") if isinstance(exc, KeyboardInterrupt) else classify(exc)
        if kind == "error":
            sys.stdout.write(traceback.format_exc())
        emit("error", kind=kind, message=message)
        return EXIT_CODES[kind]
    emit("done", manifest=str(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
