"""The sub-commands of ``sculptorgan``: demo, run, interpolate, segment, surfaces, evaluate, models."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import InputError
from ..core.options import options_from_args
from .common import ProgressBar, print_notes, print_summary


def cmd_demo(args) -> int:
    from ..demo import run_demo

    bar = ProgressBar(not args.quiet)
    try:
        report, _ = run_demo(Path(args.out), device=args.device, progress=bar)
    finally:
        bar.close()
    print_summary(report)
    return 0


def cmd_run(args) -> int:
    from ..io.volumes import read_ct
    from ..io.atomic import check_output_dir
    from ..pipeline import run_pipeline
    from ..outputs.results import OutputOptions, write_results

    check_output_dir(Path(args.out))
    options = options_from_args(args)  # bad options fail before any reading
    ct = read_ct(args.input)
    bar = ProgressBar(not args.quiet)
    try:
        result = run_pipeline(ct, options, progress=bar)
    finally:
        bar.close()
    report = write_results(result, args.out, source=str(args.input),
                           options=OutputOptions(args.mesh_format, args.ras, args.nrrd))
    print_summary(report)
    return 0


def cmd_interpolate(args) -> int:
    from ..io.volumes import read_ct, write_volume
    from ..io.atomic import check_not_input, staged_output_file
    from ..pipeline import run_pipeline

    check_not_input(Path(args.output), Path(args.input))
    options = options_from_args(args, steps=("interpolate",))
    ct = read_ct(args.input)
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
    from ..io.volumes import read_ct, write_volume
    from ..io.atomic import check_not_input, staged_output_file
    from ..pipeline import run_pipeline

    check_not_input(Path(args.output), Path(args.input))
    options = options_from_args(args, steps=("segment",))
    ct = read_ct(args.input)
    bar = ProgressBar(not args.quiet)
    try:
        result = run_pipeline(ct, options, progress=bar)
    finally:
        bar.close()
    labels = result.labels
    if str(args.output).lower().endswith(".seg.nrrd"):
        from ..core.anatomy import crops_to_full
        from ..outputs.results import structure_labelmap

        labels = structure_labelmap(labels, crops_to_full(result.structure_crops(), labels.shape))
    with staged_output_file(args.output) as tmp:
        write_volume(labels, tmp)
    from ..outputs.report import structure_volumes_ml

    volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in structure_volumes_ml(result).items()) or "nothing found"
    print(f"{args.output}: {volumes} ({result.methods['segment'].get('method')})")
    print_notes(result.methods["segment"])
    return 0


def cmd_surfaces(args) -> int:
    from ..io.volumes import read_ct, read_labels
    from ..measure.structures import measure_structures, measurements_table, write_measurements_csv
    from ..io.atomic import staged_output_dir
    from ..surfaces.export import write_meshes
    from ..surfaces.meshing import labelmap_to_meshes

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
    from ..measure.evaluation import evaluate_files

    evaluate_files(args.pred, args.gt, args.out)
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
