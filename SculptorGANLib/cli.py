"""The ``sculptorgan`` command: demo, run, and one sub-command per stage."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import CancelledError, InputError, SculptorGANError

log = logging.getLogger("sculptorgan")


# ----------------------------------------------------------------------------- progress
class ProgressBar:
    """A tqdm bar driven by ``(fraction, message)`` callbacks (quiet when not on a terminal with --quiet)."""

    def __init__(self, enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(total=100, disable=not enabled, bar_format="{l_bar}{bar}| {elapsed}<{remaining}",
                        file=sys.stderr, leave=False)

    def __call__(self, fraction: float, message: str = "") -> None:
        target = int(round(100 * min(max(fraction, 0.0), 1.0)))
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        if message:
            self.bar.set_description_str(message[:40])

    def close(self) -> None:
        self.bar.close()


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated slice indices, got {text!r}") from None


def _steps(text: str) -> tuple[str, ...]:
    from .pipeline import STEPS

    steps = tuple(s.strip() for s in text.replace(" ", ",").split(",") if s.strip())
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown step(s) {bad}; choose from {', '.join(STEPS)}")
    return steps


# ----------------------------------------------------------------------------- shared options
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where networks run (auto: CUDA GPU when present, else CPU)")


def _add_grid(p: argparse.ArgumentParser, missing: bool = True) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--factor", type=int, help="through-plane upsampling factor K (thick → thin)")
    g.add_argument("--target-spacing", type=float, metavar="MM", help="through-plane output spacing in mm")
    if missing:
        p.add_argument("--missing", type=_int_list, metavar="I,J,...", help="indices of slices that are missing")
    p.add_argument("--no-fill-missing", dest="fill_missing", action="store_false",
                   help="do not synthesize missing slices")
    p.add_argument("--method", choices=["gan", "linear", "cubic"],
                   help="interpolation method (default: the GAN when its weights ship, else cubic)")
    p.add_argument("--interp-model", metavar="CARD", help="interpolation model card (.json) or shipped model name")
    p.add_argument("--enhance", action="store_true", help="also refine the acquired slices with the GAN (experimental)")


def _add_segmentation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="segmentation model card (.json) or shipped model name")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="keep the raw network output (no per-side largest kidney, attached tumor, hole filling)")
    p.add_argument("--morph-mm", type=float, default=0.0, metavar="R", help="morphological clean-up radius in mm")
    p.add_argument("--overlap", type=float, default=0.25, metavar="F",
                   help="sliding-window overlap 0–0.9 (higher: smoother, slower; default 0.25)")


def _add_mesh(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoothing", type=float, default=0.5, help="surface smoothing factor 0–1 (Slicer-like)")
    p.add_argument("--format", dest="mesh_format", default="stl", choices=["stl", "obj", "ply", "vtp"])
    p.add_argument("--ras", action="store_true", help="write model coordinates in RAS instead of LPS")


# ----------------------------------------------------------------------------- commands
def _with_missing(ct, missing: tuple[int, ...] | None):
    if not missing:
        return ct
    from .phantom import drop_slices

    bad = [i for i in missing if i <= 0 or i >= ct.shape[0] - 1]
    if bad:
        raise InputError(f"--missing {bad}: only inner slices 1..{ct.shape[0] - 2} can be missing")
    return drop_slices(ct, missing)


def _print_notes(info: dict) -> None:
    """A stage's notes (fallbacks taken, warnings about the input) on stderr."""
    for note in info.get("notes", []):
        print(f"  note: {note}", file=sys.stderr)


def _print_summary(report_path: Path) -> None:
    import json

    report = json.loads(report_path.read_text(encoding="utf-8"))
    print(f"Results in {report_path.parent}")
    for stage, info in report["methods"].items():
        print(f"  {stage:12s} {info.get('method')}  ({report['timings_s'].get(stage, 0):.2f} s)")
        _print_notes(info)
    for name, ml in report.get("volumes_ml", {}).items():
        print(f"  {name:12s} {ml:8.1f} mL")
    scores = report.get("demo", {}).get("scores_vs_ground_truth")
    if scores:
        print("  vs ground truth: " + ", ".join(f"{k}={v}" for k, v in scores.items()))
    print(f"  report: {report_path}")


def cmd_demo(args) -> int:
    from .demo import run_demo

    bar = ProgressBar(not args.quiet)
    try:
        report, _ = run_demo(Path(args.out), device=args.device, progress=bar)
    finally:
        bar.close()
    _print_summary(report)
    return 0


def _pipeline_options(args, steps):
    from .pipeline import PipelineOptions

    return PipelineOptions(steps=steps, factor=args.factor, target_spacing=args.target_spacing,
                           fill_missing=args.fill_missing, interpolation_method=args.method,
                           interpolation_model=args.interp_model, enhance=args.enhance,
                           segmentation_model=getattr(args, "model", None), device=args.device,
                           postprocess=getattr(args, "postprocess", True), morph_mm=getattr(args, "morph_mm", 0.0),
                           overlap=getattr(args, "overlap", 0.25), smoothing=getattr(args, "smoothing", 0.5))


def cmd_run(args) -> int:
    from .io import read_ct
    from .output import check_output_dir
    from .pipeline import run_pipeline
    from .results import OutputOptions, write_results

    check_output_dir(Path(args.out))
    options = _pipeline_options(args, args.steps)  # bad options fail before any reading
    ct = _with_missing(read_ct(args.input), args.missing)
    bar = ProgressBar(not args.quiet)
    try:
        result = run_pipeline(ct, options, progress=bar)
    finally:
        bar.close()
    report = write_results(result, args.out, source=str(args.input),
                           options=OutputOptions(args.mesh_format, args.ras, args.nrrd))
    _print_summary(report)
    return 0


def cmd_interpolate(args) -> int:
    from .io import read_ct, write_volume
    from .output import check_not_input, staged_output_file
    from .pipeline import run_pipeline

    check_not_input(Path(args.output), Path(args.input))
    options = _pipeline_options(args, ("interpolate",))
    ct = _with_missing(read_ct(args.input), args.missing)
    bar = ProgressBar(not args.quiet)
    try:
        result = run_pipeline(ct, options, progress=bar)
    finally:
        bar.close()
    with staged_output_file(args.output) as tmp:
        write_volume(result.ct, tmp)
    info = result.methods["interpolate"]
    print(f"{args.output}: {result.ct.shape[0]} slices at {result.ct.spacing[2]:.3g} mm ({info.get('method')})")
    return 0


def cmd_segment(args) -> int:
    from .io import read_ct, write_volume
    from .output import check_not_input, staged_output_file
    from .pipeline import PipelineOptions, run_pipeline

    check_not_input(Path(args.output), Path(args.input))
    options = PipelineOptions(steps=("segment",), segmentation_model=args.model, device=args.device,
                              postprocess=args.postprocess, morph_mm=args.morph_mm, overlap=args.overlap)
    ct = read_ct(args.input)
    bar = ProgressBar(not args.quiet)
    try:
        result = run_pipeline(ct, options, progress=bar)
    finally:
        bar.close()
    labels = result.labels
    if str(args.output).lower().endswith(".seg.nrrd"):
        from .anatomy import crops_to_full
        from .results import structure_labelmap

        labels = structure_labelmap(labels, crops_to_full(result.structure_crops(), labels.shape))
    with staged_output_file(args.output) as tmp:
        write_volume(labels, tmp)
    from .report import structure_volumes_ml

    volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in structure_volumes_ml(result).items()) or "nothing found"
    print(f"{args.output}: {volumes} ({result.methods['segment'].get('method')})")
    _print_notes(result.methods["segment"])
    return 0


def cmd_surfaces(args) -> int:
    from .io import read_ct, read_labels
    from .measure import measure_structures, measurements_table, write_measurements_csv
    from .output import staged_output_dir
    from .surfaces import labelmap_to_meshes, write_meshes

    labels = read_labels(args.labelmap)
    ct_array = None
    if args.ct:
        ct = read_ct(args.ct)
        if not ct.same_grid(labels):
            raise InputError(f"{args.ct}: is not on the same grid as {args.labelmap}")
        ct_array = ct.array
    meshes = labelmap_to_meshes(labels, ct_array, smoothing=args.smoothing)
    if not meshes:
        raise InputError(f"{args.labelmap}: contains no labelled voxels")
    measurements = measure_structures(labels, meshes, ct_array)
    with staged_output_dir(args.outdir) as stage:
        paths = write_meshes(meshes, stage, fmt=args.mesh_format, ras=args.ras)
        write_measurements_csv(measurements, stage / "measurements.csv")
    print(measurements_table(measurements))
    print(f"{len(paths)} model file(s) and measurements.csv in {args.outdir}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_files

    evaluate_files(args.pred, args.gt, args.out)
    table = Path(args.out) / "summary.md"
    if table.is_file():
        print(table.read_text(encoding="utf-8").strip())
    print(f"metrics (CSV, JSON, box plots) written to {args.out}")
    return 0


def cmd_models(args) -> int:
    import json

    from .models import MODELS_DIR, list_models

    cards = list_models()
    if args.json:
        print(json.dumps([c.to_json() for c in cards], indent=2))
        return 0
    if not cards:
        print(f"no models shipped in {MODELS_DIR}")
    for card in cards:
        print(f"{card.name:28s} {card.task:14s} {card.architecture:18s} v{card.version}  {card.weights}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sculptorgan", description=(
        "CT slice interpolation (SculptorGAN), kidney/tumor segmentation (WP-UNet) and 3D models."))
    parser.add_argument("--version", action="version", version=f"sculptorgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline on the built-in synthetic phantom")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    _add_device(p), _add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the pipeline on a CT (NIfTI/NRRD/MHA file or DICOM folder)")
    p.add_argument("input", help="CT file or DICOM series folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=_steps, default=("interpolate", "segment", "surfaces"),
                   help="comma-separated steps: interpolate,segment,surfaces (default: all)")
    _add_segmentation(p)
    p.add_argument("--nrrd", action="store_true", help="also write the CT as .nrrd")
    _add_grid(p), _add_mesh(p), _add_device(p), _add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("interpolate", help="thick → thin slices and missing-slice filling (Phase I)")
    p.add_argument("input"), p.add_argument("output", help="output volume (.nii.gz, .nrrd, .mha)")
    _add_grid(p), _add_device(p), _add_common(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("segment", help="kidney and tumor segmentation (Phase II)")
    p.add_argument("input"), p.add_argument("output", help="labelmap (.nii.gz) or Slicer .seg.nrrd")
    _add_segmentation(p), _add_device(p), _add_common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("surfaces", help="3D models and measurements from a labelmap")
    p.add_argument("labelmap"), p.add_argument("outdir")
    p.add_argument("--ct", help="the CT on the same grid (helps split left/right by the body midline)")
    _add_mesh(p), _add_common(p)
    p.set_defaults(func=cmd_surfaces)

    p = sub.add_parser("evaluate", help="Dice, Jaccard, precision, recall, accuracy, Hausdorff of PRED vs GT")
    p.add_argument("pred", help="predicted labelmap file or folder"), p.add_argument("gt", help="ground truth file or folder")
    p.add_argument("--out", default="evaluation", help="folder for CSV/JSON/plots")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    from .batch import add_batch_parser

    add_batch_parser(sub)

    p = sub.add_parser("models", help="list the shipped models")
    p.add_argument("--json", action="store_true")
    _add_common(p)
    p.set_defaults(func=cmd_models)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
