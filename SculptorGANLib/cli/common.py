"""What every sub-command shares: the progress bar, one-line errors and exit codes, the printed summary."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..core.errors import CancelledError, SculptorGANError

log = logging.getLogger("sculptorgan")


class ProgressBar:
    """A tqdm bar on stderr driven by ``(fraction, message)`` callbacks; ``enabled=False`` (--quiet) hides it.

    The default shows the message before the bar (one run); ``cohort=True`` puts the percentage first and a
    wider message after the bar, with elapsed time and ETA (``batch``).
    """

    def __init__(self, enabled: bool = True, cohort: bool = False):
        from tqdm import tqdm

        bar_format = ("{percentage:3.0f}%|{bar:24}| [{elapsed}<{remaining}] {desc}" if cohort
                      else "{l_bar}{bar}| {elapsed}<{remaining}")
        self.width, self.pad = (60, True) if cohort else (40, False)
        self.bar = tqdm(total=100, disable=not enabled, bar_format=bar_format, file=sys.stderr, leave=False)

    def __call__(self, fraction: float, message: str = "") -> None:
        target = int(round(100 * min(max(fraction, 0.0), 1.0)))
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        if message:
            text = message[:self.width]
            self.bar.set_description_str(text.ljust(self.width) if self.pad else text, refresh=True)

    def close(self) -> None:
        self.bar.close()


def add_common(p: argparse.ArgumentParser) -> None:
    """--debug and --quiet, on every sub-command."""
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs (default: off)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: a progress bar on stderr)")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """--overwrite: replace an output folder that is not (only) an earlier result of ours."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output folder even when it holds files SculptorGAN did not write (they are "
                        "deleted; default: refuse)")


def add_input(p: argparse.ArgumentParser) -> None:
    """How the input is read: the DICOM series, and the size limits."""
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID of the DICOM series to read when the folder "
                                                   "holds several (default: the one with most slices)")
    p.add_argument("--allow-large", action="store_true",
                   help="run even when the input or the work it needs is beyond the size limits (default: refuse "
                        "with the estimate)")


def add_output(p: argparse.ArgumentParser) -> None:
    """How models are written (run, batch, surfaces)."""
    p.add_argument("--format", dest="mesh_format", default="stl", choices=["stl", "obj", "ply", "vtp"],
                   help="surface model file format (default: stl)")
    p.add_argument("--ras", action="store_true", help="write model coordinates in RAS instead of LPS (default: LPS)")


def print_notes(info: dict) -> None:
    """A stage's notes (fallbacks taken, warnings about the input) on stderr."""
    for note in info.get("notes", []):
        print(f"  note: {note}", file=sys.stderr)


def method_line(stage: str, info: dict) -> str:
    """What a stage did, in words: for interpolation, which method made how many slices."""
    method = str(info.get("method"))
    if stage == "interpolate":
        from ..outputs.report import slices_by_method

        counts = slices_by_method(info)
        if counts is not None:
            made = {m: n for m, n in counts.items() if n and m not in ("acquired", "kept", "original")}
            if not made:
                return "no slices synthesized"
            line = ", ".join(f"{m} {n} slice{'s' if n != 1 else ''}" for m, n in made.items())
            adaptation = info.get("adaptation") or {}
            if "used" in adaptation:
                line += " (network adapted to this scan)" if adaptation["used"] else " (adapted network not used)"
            return line
    return method


def print_summary(report_path: Path) -> None:
    import json

    report = json.loads(report_path.read_text(encoding="utf-8"))
    print(f"Results in {report_path.parent}")
    for stage, info in report["methods"].items():
        print(f"  {stage:12s} {method_line(stage, info)}  ({report['timings_s'].get(stage, 0):.2f} s)")
        print_notes(info)
    volumes = report.get("volumes_ml", {})
    truth = report.get("demo", {}).get("true_volumes_ml", {})
    if "segment" in report["methods"] and not any(n.startswith("kidney") and v > 0 for n, v in volumes.items()):
        print("  No kidney found in this CT (the segmentation is empty); check the input and the model")
    for name, ml in volumes.items():
        line = f"  {name:12s} {ml:8.1f} mL"
        if name in truth:
            line += f"   (true {truth[name]:.1f} mL)"
        print(line)
    scores = report.get("demo", {}).get("scores_vs_ground_truth")
    if scores:
        print("  vs ground truth: " + ", ".join(f"{k}={v}" for k, v in scores.items()))
    print(f"  report: {report_path}")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived (a scheduler's pre-emption, ``timeout``): unwind so staging is removed."""


def _terminate(signum, _frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def install_signal_handlers() -> dict:
    """Turn SIGTERM/SIGHUP into :class:`Terminated` (main thread only); returns the previous handlers."""
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, _terminate)
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _source(args: argparse.Namespace) -> str:
    """The input a command was working on, for messages."""
    for name in ("input", "labelmap", "pred", "inputs"):
        value = getattr(args, name, None)
        if value:
            return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return ""


def _quiet_stdout() -> None:
    """After a closed pipe (``| head``): send what is left to /dev/null so Python's exit flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command: one-line errors and exit codes (2 bad input, 130 cancelled, 143 terminated,
    1 unexpected or out of memory)."""
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    func: Callable = args.func
    started = time.perf_counter()
    previous = install_signal_handlers()
    source = _source(args)
    where = f" while processing {source}" if source else ""
    try:
        code = func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except CancelledError as exc:
        print(f"sculptorgan: cancelled: {exc}", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"sculptorgan: terminated by {exc}; nothing was written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("sculptorgan: interrupted", file=sys.stderr)
        return 130
    except SculptorGANError as exc:
        if args.debug:
            raise
        print(f"sculptorgan: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        if args.debug:
            raise
        print(f"sculptorgan: error: out of memory{where} ({str(exc)[:120] or 'MemoryError'}); try a smaller "
              "--factor or --target-spacing, crop the CT, or use a machine with more memory", file=sys.stderr)
        return 1
    except Exception as exc:  # anything unexpected: one line unless --debug
        if args.debug:
            raise
        if "out of memory" in str(exc).lower():
            print(f"sculptorgan: error: out of memory{where} on the GPU ({str(exc).splitlines()[0][:120]}); "
                  "try --device cpu", file=sys.stderr)
            return 1
        print(f"sculptorgan: unexpected error{where}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
              "(run with --debug for details)", file=sys.stderr)
        return 1
    finally:
        _restore_signal_handlers(previous)
    log.debug("finished in %.2f s", time.perf_counter() - started)
    return code
