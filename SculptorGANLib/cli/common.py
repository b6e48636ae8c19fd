"""What every sub-command shares: the progress bar, one-line errors and exit codes, the printed summary."""
from __future__ import annotations

import argparse
import logging
import sys
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
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_output(p: argparse.ArgumentParser) -> None:
    """How models are written (run, batch, surfaces)."""
    p.add_argument("--format", dest="mesh_format", default="stl", choices=["stl", "obj", "ply", "vtp"],
                   help="surface model file format (default: stl)")
    p.add_argument("--ras", action="store_true", help="write model coordinates in RAS instead of LPS")


def print_notes(info: dict) -> None:
    """A stage's notes (fallbacks taken, warnings about the input) on stderr."""
    for note in info.get("notes", []):
        print(f"  note: {note}", file=sys.stderr)


def print_summary(report_path: Path) -> None:
    import json

    report = json.loads(report_path.read_text(encoding="utf-8"))
    print(f"Results in {report_path.parent}")
    for stage, info in report["methods"].items():
        print(f"  {stage:12s} {info.get('method')}  ({report['timings_s'].get(stage, 0):.2f} s)")
        print_notes(info)
    for name, ml in report.get("volumes_ml", {}).items():
        print(f"  {name:12s} {ml:8.1f} mL")
    scores = report.get("demo", {}).get("scores_vs_ground_truth")
    if scores:
        print("  vs ground truth: " + ", ".join(f"{k}={v}" for k, v in scores.items()))
    print(f"  report: {report_path}")


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command: one-line errors and exit codes (2 bad input, 130 cancelled, 1 unexpected)."""
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    func: Callable = args.func
    started = time.perf_counter()
    try:
        code = func(args)
    except CancelledError as exc:
        print(f"sculptorgan: cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("sculptorgan: interrupted", file=sys.stderr)
        return 130
    except SculptorGANError as exc:
        if args.debug:
            raise
        print(f"sculptorgan: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything unexpected: one line unless --debug
        if args.debug:
            raise
        print(f"sculptorgan: unexpected error: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return 1
    log.debug("finished in %.2f s", time.perf_counter() - started)
    return code
