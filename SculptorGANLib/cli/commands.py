"""The sub-commands of ``sculptorgan``: demo, run, interpolate, segment, surfaces, evaluate, models.

Every command checks its outputs before it reads anything (never the input, never a folder of the user's),
refuses work beyond the size limits with a one-line reason, and writes all-or-nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..core.errors import InputError, OutputError
from ..core.options import options_from_args
from ..pipeline import run_pipeline
from .common import ProgressBar, method_line, print_notes, print_summary


def read_checked(source, options, args):
    """The CT of ``source`` after the model and size checks (see :mod:`..io.preflight`)."""
    from ..io.preflight import read_checked as preflight_read

    return preflight_read(source, options, getattr(args, "series", None), getattr(args, "allow_large", False))


def _series_note(ct) -> None:
    other = ct.meta.get("other_series")
    if other:
        print(f"  note: the DICOM folder holds {len(other) + 1} series; using {ct.meta['series_instance_uid']} "
              f"(most slices); others: {', '.join(f'{s} ({n} files)' for s, n in other.items())}; "
              "choose one with --series UID", file=sys.stderr)


def _run_with_bar(ct, options, quiet: bool):
    bar = ProgressBar(not quiet)
    try:
        return run_pipeline(ct, options, progress=bar)
    finally:
        bar.close()


def _check_volume_output(path: str) -> None:
    from ..io.volumes import VOLUME_SUFFIXES, volume_suffix

    if not volume_suffix(path):
        raise OutputError(f"{path}: unknown volume format; use one of {', '.join(VOLUME_SUFFIXES)}")


def _run_one_stage(args, step: str):
    """``interpolate`` / ``segment``: output name checked first (never an input), then the input read and the
    one stage run with a progress bar."""
    from ..io.atomic import check_not_input

    _check_volume_output(args.output)
    check_not_input(args.output, args.input)
    options = options_from_args(args, steps=(step,))
    ct = read_checked(args.input, options, args)
    _series_note(ct)
    return _run_with_bar(ct, options, args.quiet)


def cmd_demo(args) -> int:
    from ..demo import run_demo

    bar = ProgressBar(not args.quiet)
    try:
        report, _ = run_demo(Path(args.out), device=args.device, progress=bar, overwrite=args.overwrite)
    finally:
        bar.close()
    print_summary(report)
    return 0


def cmd_run(args) -> int:
    from ..io.atomic import check_output_dir, check_replaceable
    from ..outputs.results import OutputOptions, write_results

    out = check_output_dir(args.out, [args.input])
    check_replaceable(out, args.overwrite)
    options = options_from_args(args)  # bad options fail before any reading
    ct = read_checked(args.input, options, args)
    _series_note(ct)
    result = _run_with_bar(ct, options, args.quiet)
    report = write_results(result, out, source=str(args.input),
                           options=OutputOptions(args.mesh_format, args.ras, args.nrrd),
                           inputs=[args.input], overwrite=args.overwrite)
    print_summary(report)
    return 0


def cmd_interpolate(args) -> int:
    from ..io.atomic import staged_output_file
    from ..io.volumes import write_volume

    result = _run_one_stage(args, "interpolate")
    with staged_output_file(args.output, [args.input]) as tmp:
        write_volume(result.ct, tmp)
    info = result.methods["interpolate"]
    print(f"{args.output}: {result.ct.shape[0]} slices at {result.ct.spacing[2]:.3g} mm "
          f"({method_line('interpolate', info)})")
    print_notes(info)
    return 0


def cmd_segment(args) -> int:
    from ..io.atomic import staged_output_file
    from ..io.volumes import write_volume

    result = _run_one_stage(args, "segment")
    labels = result.labels
    if str(args.output).lower().endswith(".seg.nrrd"):
        from ..core.anatomy import crops_to_full
        from ..outputs.results import structure_labelmap

        labels = structure_labelmap(labels, crops_to_full(result.structure_crops(), labels.shape))
    with staged_output_file(args.output, [args.input]) as tmp:
        write_volume(labels, tmp)
    from ..outputs.report import structure_volumes_ml

    volumes = structure_volumes_ml(result)
    found = ", ".join(f"{k} {v:.1f} mL" for k, v in volumes.items())
    if not any(k.startswith("kidney") and v > 0 for k, v in volumes.items()):
        found = (found + "; " if found else "") + "no kidney found"
    print(f"{args.output}: {found} ({result.methods['segment'].get('method')})")
    print_notes(result.methods["segment"])
    return 0


def cmd_surfaces(args) -> int:
    from ..io.atomic import check_output_dir, check_replaceable, staged_output_dir
    from ..io.volumes import read_ct, read_labels
    from ..measure.structures import measure_structures, measurements_table
    from ..outputs.results import write_measurements
    from ..surfaces.export import write_meshes
    from ..surfaces.meshing import labelmap_to_meshes

    inputs = [args.labelmap, args.ct]
    out = check_output_dir(args.outdir, inputs)
    check_replaceable(out, args.overwrite)
    options = options_from_args(args, steps=("surfaces",))
    labels = read_labels(args.labelmap)
    ct_array = None
    if args.ct:
        ct = read_ct(args.ct)
        if not ct.same_grid(labels):
            raise InputError(f"{args.ct}: is not on the same grid as {args.labelmap}")
        ct_array = ct.array
    meshes = labelmap_to_meshes(labels, ct_array, smoothing=options.smoothing)
    if not meshes:
        raise InputError(f"{args.labelmap}: contains no labelled voxels (no kidney or tumor found)")
    measurements = measure_structures(labels, meshes, ct_array)
    from ..outputs.results import verify_meshes

    with staged_output_dir(out, inputs, overwrite=args.overwrite, kind="surfaces") as stage:
        paths = write_meshes(meshes, stage, fmt=args.mesh_format, ras=args.ras)
        verify_meshes(paths, meshes)
        write_measurements(measurements, stage / "measurements.csv")
    print(measurements_table(measurements))
    print(f"{len(paths)} model file(s) and measurements.csv in {args.outdir}")
    return 0


def cmd_evaluate(args) -> int:
    from ..measure.evaluation import evaluate_files

    summary = evaluate_files(args.pred, args.gt, args.out, overwrite=args.overwrite)
    for warning in summary.get("warnings", []):
        print(f"  warning: {warning}", file=sys.stderr)
    table = Path(args.out) / "summary.md"
    if table.is_file():
        print(table.read_text(encoding="utf-8").strip())
    print(f"metrics (CSV, JSON, box plots) written to {args.out}")
    return 0


def cmd_models(args) -> int:
    import json

    from ..nn.cards import MODELS_DIR, list_models

    cards = list_models()
    if args.json:
        print(json.dumps([c.to_json() for c in cards], indent=2))
        return 0
    if not cards:
        print(f"no models shipped in {MODELS_DIR}")
    for card in cards:
        print(f"{card.name:28s} {card.task:14s} {card.architecture:18s} v{card.version}  {card.weights}")
    return 0
