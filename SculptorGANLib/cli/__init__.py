"""The ``sculptorgan`` command: demo, run, one sub-command per stage, batch and models.

A door: it reads arguments and files, calls the library and prints; nothing in the library imports it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__
from ..core.options import add_arguments
from .batch import add_batch_parser
from .commands import cmd_demo, cmd_evaluate, cmd_interpolate, cmd_models, cmd_run, cmd_segment, cmd_surfaces
from .common import add_common, add_input, add_output, add_overwrite, run_parsed

__all__ = ["build_parser", "main", "run_parsed"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sculptorgan", description=(
        "CT slice interpolation (SculptorGAN), kidney/tumor segmentation (WP-UNet) and 3D models."))
    parser.add_argument("--version", action="version", version=f"sculptorgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline on the built-in synthetic phantom")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    add_arguments(p, ("device",))
    add_overwrite(p), add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the pipeline on a CT (NIfTI/NRRD/MHA file or DICOM folder)")
    p.add_argument("input", help="CT file or DICOM series folder")
    p.add_argument("--out", required=True, help="output folder (required; created, or replaced as a whole when it "
                                                "holds an earlier result)")
    p.add_argument("--nrrd", action="store_true", help="also write the CT as .nrrd (default: off)")
    add_arguments(p, ("steps", "grid", "roi", "interpolate", "segment", "surfaces", "device"))
    add_input(p), add_output(p), add_overwrite(p), add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("interpolate", help="thick → thin slices and missing-slice filling (Phase I)")
    p.add_argument("input", help="CT file or DICOM series folder")
    p.add_argument("output", help="output volume (.nii.gz, .nii, .nrrd, .mha)")
    add_arguments(p, ("grid", "roi", "interpolate", "device"))
    add_input(p), add_common(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("segment", help="kidney and tumor segmentation (Phase II)")
    p.add_argument("input", help="CT file or DICOM series folder")
    p.add_argument("output", help="labelmap (.nii.gz: 1 kidney, 2 tumor) or Slicer .seg.nrrd")
    add_arguments(p, ("roi", "segment", "device"))
    add_input(p), add_common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("surfaces", help="3D models and measurements from a labelmap")
    p.add_argument("labelmap", help="labelmap (1 kidney, 2 tumor) or Slicer .seg.nrrd (segments read by name)")
    p.add_argument("outdir", help="output folder for the models and measurements.csv")
    p.add_argument("--ct", help="the CT on the same grid (helps split left/right by the body midline; default: none)")
    add_arguments(p, ("surfaces",))
    add_output(p), add_overwrite(p), add_common(p)
    p.set_defaults(func=cmd_surfaces)

    p = sub.add_parser("evaluate", help="Dice, Jaccard, precision, recall, accuracy, Hausdorff of PRED vs GT")
    p.add_argument("pred", help="predicted labelmap file or folder"), p.add_argument("gt", help="ground truth file or folder")
    p.add_argument("--out", default="evaluation", help="folder for CSV/JSON/plots (default: evaluation)")
    add_overwrite(p), add_common(p)
    p.set_defaults(func=cmd_evaluate)

    add_batch_parser(sub)

    p = sub.add_parser("models", help="list the shipped models")
    p.add_argument("--json", action="store_true", help="print the model cards as JSON (default: a table)")
    add_common(p)
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
