"""``sculptorgan batch``: the cohort runner (:mod:`SculptorGANLib.batch`) on the command line."""
from __future__ import annotations

import argparse
import os
import sys

from ..core.options import add_arguments, options_from_args
from .common import ProgressBar, add_common, add_output


def cmd_batch(args) -> int:
    from ..batch.ranks import resolve_rank
    from ..batch.runner import run_batch
    from ..outputs.results import OutputOptions

    options = options_from_args(args)
    output_options = OutputOptions(mesh_format=args.mesh_format, ras=args.ras, write_nrrd=args.nrrd,
                                   preview=not args.no_preview)
    rank, world_size = resolve_rank(args.rank, args.world_size)
    bar = ProgressBar(enabled=not args.quiet and rank == 0, cohort=True)
    try:
        summary = run_batch(args.inputs, args.out, options, progress=bar, rank=rank, world_size=world_size,
                            output_options=output_options, force=args.force, allow_large=args.allow_large)
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
    p = subparsers.add_parser(
        "batch", help="run the pipeline over a cohort (folder of volumes / DICOM series, or a CSV list)",
        description="Each case goes into OUT/<case>/ like `sculptorgan run`; OUT/summary.csv lists status, "
                    "reason, timings and volumes. Finished cases are skipped on a rerun; a failing case is "
                    "recorded and the others go on (exit code 3 when any failed; 0 under torchrun). Under "
                    "`torchrun --nproc_per_node=N -m SculptorGANLib batch ...` the cases are sharded by rank.")
    p.add_argument("inputs", nargs="+", help="folder of volumes / DICOM series folders, CSV list (column 'path', "
                                             "optional 'case'), or volume files")
    p.add_argument("--out", required=True, help="cohort output folder (one sub-folder per case)")
    add_arguments(p, ("steps", "grid", "roi", "interpolate", "segment", "surfaces", "device"),
                  exclude=("missing_slices",))
    add_output(p)
    p.add_argument("--nrrd", action="store_true", help="also write each CT as .nrrd (default: off)")
    p.add_argument("--no-preview", action="store_true", help="skip the PNG preview of each case (default: write it)")
    p.add_argument("--force", action="store_true", help="redo cases an earlier run finished (default: skip them)")
    p.add_argument("--allow-large", action="store_true",
                   help="run cases beyond the size limits (default: such a case fails with the estimate)")
    p.add_argument("--rank", type=int, help="this process's shard (default: torchrun's RANK, else 0)")
    p.add_argument("--world-size", type=int, help="number of shards (default: torchrun's WORLD_SIZE, else 1)")
    add_common(p)
    p.set_defaults(func=cmd_batch)
    return p
