"""The pipeline as a subprocess for 3D Slicer: ``PythonSlicer -m SculptorGANLib.slicer_worker``.

Slicer writes the input CT to a file, starts this worker and keeps its GUI responsive while it runs.
The worker speaks a line protocol on stdout: every line that starts with :data:`PREFIX` carries one
JSON event, anything else is ordinary log output::

    @@SCULPTORGAN {"event": "start", "pid": 1234, "version": "0.1.0"}
    @@SCULPTORGAN {"event": "progress", "fraction": 0.42, "message": "segment…"}
    @@SCULPTORGAN {"event": "done", "manifest": "/tmp/x/manifest.json"}
    @@SCULPTORGAN {"event": "error", "kind": "cancelled", "message": "cancelled by the user"}

The run's options come as ONE JSON document (``--options '{...}'`` or ``--options @file.json``):
the fields of :class:`~SculptorGANLib.core.options.PipelineOptions` (:meth:`to_json`), the same
schema the CLI's flags and the Slicer panel are built from — the worker has no option flags of its own.

With ``--cancel-on-stdin`` a line ``cancel`` on stdin (or stdin closing, e.g. because Slicer went
away) stops the run at the next check; with ``--cancel-file F`` so does F appearing (Slicer's
``PythonSlicer`` launcher need not forward stdin to the real Python). Output is UTF-8 on every
platform; device ``auto`` means CUDA when usable, else the CPU (never Apple MPS). Outputs appear in ``--output`` only when the run succeeds:
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
#: Pipeline steps the worker runs; 3D models are made by Slicer itself (closed-surface representation).
WORKER_STEPS = ("interpolate", "segment")
MANIFEST = "manifest.json"


@dataclass
class WorkerOutputs:
    """What one run produced: the (possibly interpolated) CT and the per-structure labelmap."""

    ct: Any                      # CTVolume on the output grid
    interpolated: bool           # False when the CT is the input unchanged
    structures: Any = None       # LabelVolume in core.structures' per-structure values, or None
    info: dict = field(default_factory=dict)


def worker_device(name: str | None) -> str:
    """The device the worker uses: "auto" is CUDA when present, else the CPU — never Apple MPS, whose
    3D convolutions are unreliable (as other Slicer AI extensions do; an explicit "mps" is honoured)."""
    name = (name or "auto").lower()
    if name != "auto":
        return name
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def pipeline_options(request):
    """:class:`PipelineOptions` for the worker from a request (a to_json dict or PipelineOptions):
    only the steps it runs (3D models are Slicer's), device auto resolved by :func:`worker_device`."""
    from dataclasses import replace

    from .core.options import PipelineOptions

    options = request if isinstance(request, PipelineOptions) else PipelineOptions.from_json(request)
    steps = tuple(s for s in options.steps if s in WORKER_STEPS)
    return replace(options, steps=steps, device=worker_device(options.device))


def structure_labels(labels, ct_array=None):
    """LabelVolume with the one fixed value per structure of :mod:`.core.structures` (Kidney left 1,
    Kidney right 2, Tumor 3, further names after), all three always named."""
    import numpy as np

    from .core.anatomy import split_structures
    from .core.structures import STRUCTURES, structure_value
    from .core.volume import LabelVolume

    masks = split_structures(labels, ct_array)
    array = np.zeros(labels.shape, np.uint8)
    names = {s.value: s.name for s in STRUCTURES}
    known = {s.name for s in STRUCTURES}
    unknown = [n for n in masks if n not in known]
    for name, mask in masks.items():
        value = structure_value(name, unknown.index(name) if name in unknown else 0)
        names[value] = name
        array[mask] = value
    return LabelVolume(array, labels.geometry, name=labels.name, labels=names)


def run_request(ct, request, progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> WorkerOutputs:
    """Run the requested steps on ``ct`` (a CTVolume, never modified); ``request`` as for :func:`pipeline_options`."""
    from .pipeline import run_pipeline

    options = pipeline_options(request)
    result = run_pipeline(ct, options, progress=progress, cancel=cancel)
    structures = None
    if result.labels is not None:
        same = result.ct.same_grid(result.labels)
        structures = structure_labels(result.labels, result.ct.array if same else None)
    info = {"methods": result.methods, "timings_s": result.timings, "steps": list(options.steps),
            "device": options.device}
    # a new CT only when slices were made (a ROI crop alone is not worth a volume: segments keep their grid)
    interpolated = "interpolate" in options.steps and not str(
        result.methods.get("interpolate", {}).get("method", "none")).startswith("none")
    return WorkerOutputs(result.ct, interpolated, structures, info)


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
    """Files and protocol only: every pipeline option comes in the one ``--options`` JSON document."""
    p = argparse.ArgumentParser(prog="python -m SculptorGANLib.slicer_worker",
                                description="SculptorGAN pipeline worker for 3D Slicer (machine-readable progress)")
    p.add_argument("--input", required=True, help="input CT (NRRD/NIfTI/MHA) written by Slicer")
    p.add_argument("--output", required=True, help="folder for the outputs and manifest.json")
    p.add_argument("--options", default="{}", help="the run's options as one JSON object (PipelineOptions.to_json "
                   "names; missing keys take their defaults), or @file.json")
    p.add_argument("--cancel-on-stdin", action="store_true", help="stop on a 'cancel' line or when stdin closes")
    p.add_argument("--cancel-file", help="stop as soon as this file exists")
    p.add_argument("--test-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow start
    p.add_argument("--test-ignore-cancel", action="store_true", help=argparse.SUPPRESS)  # tests: must be killed
    return p


def read_request(text: str) -> dict:
    """The ``--options`` document: JSON text or ``@path`` of a JSON file; it must be an object."""
    from .core.errors import InputError

    where = "--options"
    try:
        if text.startswith("@"):
            where = text[1:]
            text = Path(where).read_text(encoding="utf-8")
        request = json.loads(text)
    except (OSError, ValueError) as exc:
        raise InputError(f"{where}: not a readable JSON options document ({exc})") from None
    if not isinstance(request, dict):
        raise InputError(f"{where}: the options must be a JSON object")
    return request


class _AnyCancel:
    """Cancelled as soon as any source says so: a ``cancel`` line / closed stdin, the cancel file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sources: list[Callable[[], bool]] = []
        if args.cancel_on_stdin:
            self.sources.append(_StdinCancel())
        if args.cancel_file:
            path = args.cancel_file
            self.sources.append(lambda: os.path.exists(path))
        self.ignore = args.test_ignore_cancel

    def __call__(self) -> bool:
        return not self.ignore and any(source() for source in self.sources)


def _utf8_output() -> None:
    """Protocol lines are UTF-8 whatever the console code page says (Windows)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="replace")
        except (AttributeError, ValueError):
            pass


def main(argv: Sequence[str] | None = None) -> int:
    _utf8_output()
    args = build_parser().parse_args(argv)
    cancel = _AnyCancel(args)
    from . import __version__

    emit("start", pid=os.getpid(), version=__version__, python=sys.version.split()[0])
    try:
        from .core.errors import CancelledError
        from .io.preflight import read_checked

        options = pipeline_options(read_request(args.options))  # bad options fail before any reading
        progress = _Progress()
        if options.device.startswith(("cuda", "mps")):  # say "no GPU" now, not after reading the input
            from .core.device import resolve_device

            resolve_device(options.device)
        progress(0.0, "reading input")
        deadline = time.monotonic() + args.test_delay
        while time.monotonic() < deadline:
            if cancel():
                raise CancelledError("cancelled by the user")
            time.sleep(0.02)
        ct = read_checked(args.input, options)  # model cards and the work size checked, as the CLI does
        outputs = run_request(ct, options, progress=progress, cancel=cancel)
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
