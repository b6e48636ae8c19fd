"""Train SculptorGAN Phase I (conditional-GAN slice interpolation), self-supervised.

From thin CT volumes, slices are dropped (regular factor k or irregular gaps) and the generator learns to
restore them from the two acquired slices on each side, their distances in mm and the cubic B-spline
estimate it refines (Algorithm 1 of the paper: discriminator step, then generator step with adversarial +
reconstruction loss). Then the generator is magnitude-pruned and fine-tuned, and the best checkpoint on
the validation slices is exported as safetensors + model card.

    python training/train_interpolation.py --config training/configs/interpolation_cpu.json --out training/runs/interp
    python training/train_interpolation.py --out training/runs/interp --resume          # continue
    torchrun --nproc-per-node 2 training/train_interpolation.py --out ...               # DDP

Data entries (``data``, ``val_data``) are files, folders (KiTS19 ``case_*/imaging.nii.gz`` or plain
folders of .nii/.nii.gz/.nrrd/.mha) or ``FILE:z0:z1`` to use only slices z0 ≤ z < z1 of a file.

``num_workers`` > 0 draws the training slices in DataLoader worker processes (item i of epoch e seeded by
(seed, e, i), ``training/loading.py``); 0 draws them in the training process as before. ``amp`` (default
true) runs both networks under autocast on CUDA with one GradScaler per network (D and G losses differ in
scale and D is idle during the warm-up), saved in the checkpoints; a no-op on CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from SculptorGANLib.interp_data import context_arrays, normalize, pad_to_multiple, spline_at  # noqa: E402
from SculptorGANLib.models import ModelCard, save_model  # noqa: E402
from SculptorGANLib.nn.gan import (GENERATOR_ARCH, PatchDiscriminator, SculptorGenerator,  # noqa: E402
                                   count_parameters)
from SculptorGANLib.nn.pruning import apply_magnitude_pruning, make_permanent, sparsity_report  # noqa: E402
from training.common import (DistInfo, Logger, amp_call, autocast, broadcast_object,  # noqa: E402
                             cleanup_distributed, gather_rng_states, grad_scaler, init_distributed,
                             load_checkpoint, load_config, mean_across_ranks, override_keys, restore_rng_states,
                             restore_scaler, save_checkpoint, scaled_step, seed_everything, unwrap, wrap_ddp,
                             write_run_record)
from training.loading import SeededDataset, epoch_batches, seeded_loader  # noqa: E402

DEFAULTS: dict = {
    # data
    "data": [],                     # training volumes (see module doc); may be empty when phantoms > 0
    "val_data": [],                 # validation volumes (model selection); default: phantoms
    "phantoms": 4,                  # synthetic phantoms added to the training pool
    "phantom_prob": 0.25,           # probability a sample comes from a phantom (when real data exist)
    "phantom_shape": [64, 128, 128],
    "phantom_z_spacings": [1.0, 1.5, 2.0, 3.0],
    # gaps
    "k_min": 2, "k_max": 6,         # dropped-slice factors (slices of the source grid)
    "irregular_prob": 0.2,          # fraction of samples with irregular gaps (missing-slice filling)
    "max_gap_mm": 24.0,             # widest gap trained; wider gaps fall back to cubic at inference
    "min_gap_mm": 0.0,              # (model card only) narrower gaps fall back to cubic at inference
    "val_factors": [2, 4],
    # model
    "n_side": 2, "base_channels": 24, "levels": 3, "pos_scale_mm": 10.0, "residual_scale": 0.25,
    "use_linear": True,             # also give the linear estimate and learn a gap-dependent cubic/linear blend
    "d_channels": 32, "d_layers": 3,
    # optimisation (paper defaults)
    "lr": 3e-4, "d_lr": 3e-4, "batch_size": 8, "patch": 192, "iters_per_epoch": 250,
    "blend_lr_mult": 30.0,          # the 2n+1 blend weights learn faster
    "max_epochs": 1000, "plateau_patience": 30, "plateau_factor": 0.2, "early_stop": 50,
    "recon_loss": "l1",             # l1 | mse | l1+mse (l1 + mse_weight·mse, stresses large errors at edges)
    "mse_weight": 10.0,
    "adv_weight": 0.002,            # weight of the (LSGAN) adversarial term; 0 disables the discriminator
    "adv_start_epoch": 1,           # epochs of reconstruction-only warm-up before the adversarial term
    "augment": True, "intensity_jitter": 0.05,
    # pruning (WP-UNet): at prune_epoch, or at prune_time_fraction of max_minutes, or at early stop
    "prune_sparsity": 0.5, "prune_epoch": -1, "prune_time_fraction": 0.7, "prune_finetune_epochs": 10,
    # misc
    "seed": 0, "threads": 1, "device": "auto", "val_every": 1,
    "num_workers": 0,               # DataLoader worker processes drawing the training slices (0: in-process)
    "amp": True,                    # mixed precision on CUDA (no-op on CPU)
    "model_name": "sculptorgan_interp", "model_version": "1",
    "data_notes": "",               # free text for the model card: sources and licenses of the data
}


# ----------------------------------------------------------------------------- data
def expand_data(entries: list[str]) -> list[tuple[Path, int | None, int | None]]:
    """(file, z0, z1) for every entry: files, ``FILE:z0:z1``, KiTS19 case folders, plain folders."""
    out = []
    for entry in entries:
        z0 = z1 = None
        parts = str(entry).split(":")
        if len(parts) == 3 and parts[1].lstrip("-").isdigit() and parts[2].lstrip("-").isdigit():
            entry, z0, z1 = parts[0], int(parts[1]), int(parts[2])
        path = Path(entry)
        if not path.is_absolute() and not path.exists():
            path = ROOT / path
        if path.is_file():
            out.append((path, z0, z1))
        elif path.is_dir():
            kits = sorted(path.glob("case_*/imaging.nii.gz"))
            files = kits or sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz", ".nrrd", ".mha")))
            if not files and any(path.glob("*.dcm")):
                files = [path]  # a DICOM series folder
            out += [(f, z0, z1) for f in files]
        else:
            raise SystemExit(f"{entry}: no such training data file or folder")
    return out


def load_volumes(entries: list[str]) -> list[dict]:
    from SculptorGANLib.io import read_ct

    vols = []
    for path, z0, z1 in expand_data(entries):
        ct = read_ct(path)
        arr = ct.array[slice(z0, z1)]
        vols.append({"name": f"{path.name}[{z0}:{z1}]" if z0 is not None else path.name,
                     "array": normalize(arr), "dz": ct.geometry.spacing[2], "real": True})
    return vols


def make_phantoms(config: dict) -> list[dict]:
    from SculptorGANLib.phantom import make_phantom

    vols = []
    for i in range(int(config["phantoms"])):
        dz = float(config["phantom_z_spacings"][i % len(config["phantom_z_spacings"])])
        ct, _ = make_phantom(tuple(config["phantom_shape"]), (2.5, 2.5, dz), seed=1000 + i)
        vols.append({"name": f"phantom_{i}_dz{dz}", "array": normalize(ct.array), "dz": dz, "real": False})
    return vols


def known_positions(nz: int, k: int, rng: np.random.Generator, irregular: bool, k_max: int) -> np.ndarray:
    """Acquired slice indices: every k-th from a random offset, or random gaps of 1..k_max slices."""
    offset = int(rng.integers(0, k))
    if not irregular:
        return np.arange(offset, nz, k)
    pos, out = offset, []
    while pos < nz:
        out.append(pos)
        pos += int(rng.integers(1, k_max + 1))
    return np.array(out)


LOCAL_KNOTS = 6


class SliceSampler:
    """Random (context, positions, cubic base, target) training patches from thin volumes."""

    def __init__(self, volumes: list[dict], config: dict, rng: np.random.Generator):
        if not volumes:
            raise SystemExit("no training volumes: give data entries or phantoms > 0")
        self.vols, self.cfg, self.rng = volumes, config, rng
        real = [i for i, v in enumerate(volumes) if v["real"]]
        fake = [i for i, v in enumerate(volumes) if not v["real"]]
        p = np.zeros(len(volumes))
        if real and fake:
            p[real] = (1 - config["phantom_prob"]) / len(real)
            p[fake] = config["phantom_prob"] / len(fake)
        else:
            p[:] = 1 / len(volumes)
        self.p = p

    def _crop(self, arr: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Slices ``zs`` of ``arr``, randomly cropped/padded in-plane to the patch size and augmented."""
        size, rng = int(self.cfg["patch"]), self.rng
        _, h, w = arr.shape
        y0 = int(rng.integers(0, max(h - size, 0) + 1))
        x0 = int(rng.integers(0, max(w - size, 0) + 1))
        slab = arr[zs, y0:y0 + size, x0:x0 + size]
        ph, pw = size - slab.shape[1], size - slab.shape[2]
        if ph or pw:
            slab = np.pad(slab, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), constant_values=-1.024)
        if self.cfg["augment"]:
            if rng.random() < 0.5:
                slab = slab[:, :, ::-1]
            if rng.random() < 0.5:
                slab = slab[:, ::-1]
            slab = np.rot90(slab, int(rng.integers(0, 4)), axes=(1, 2))
            jitter = float(self.cfg["intensity_jitter"])
            if jitter:
                slab = (slab + 1.0) * float(rng.uniform(1 - jitter, 1 + jitter)) - 1.0
        return np.ascontiguousarray(slab, dtype=np.float32)

    def sample(self) -> tuple[np.ndarray, ...]:
        """(context 2n×P×P, positions mm 2n, cubic 1×P×P, target 1×P×P, linear 1×P×P)."""
        cfg, rng = self.cfg, self.rng
        while True:
            vol = self.vols[int(rng.choice(len(self.vols), p=self.p))]
            arr, dz = vol["array"], vol["dz"]
            if cfg["augment"] and rng.random() < 0.5:
                arr = arr[::-1]  # head-feet reversal
            nz = arr.shape[0]
            k_hi = min(int(cfg["k_max"]), int(cfg["max_gap_mm"] // dz), nz // 3)
            if k_hi < max(2, int(cfg["k_min"])):
                continue
            k = int(rng.integers(max(2, int(cfg["k_min"])), k_hi + 1))
            known = known_positions(nz, k, rng, rng.random() < cfg["irregular_prob"], k_hi)
            gaps_ok = np.setdiff1d(np.arange(known[0] + 1, known[-1]), known) if len(known) >= 2 else []
            if len(gaps_ok) == 0:
                continue
            target = int(gaps_ok[int(rng.integers(0, len(gaps_ok)))])
            # the cubic B-spline is computed through the nearest LOCAL_KNOTS acquired slices on each side
            # (its weights decay ~3.7x per knot, so this equals the global spline used at inference to <0.1%)
            j = int(np.searchsorted(known, target))
            window = known[max(0, j - LOCAL_KNOTS):j + LOCAL_KNOTS]
            slab = self._crop(arr, np.append(window, target))
            kf = window.astype(float)
            ctx, pos = context_arrays(kf, slab[:-1], float(target), dz, int(cfg["n_side"]))
            base = spline_at(kf, slab[:-1], np.array([float(target)]))
            linear = spline_at(kf, slab[:-1], np.array([float(target)]), "linear")
            return ctx, pos, base, slab[-1:], linear

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """One sample drawn with ``rng`` (a SeededDataset item, in a DataLoader worker)."""
        self.rng = rng
        return self.sample()

    def batch(self, n: int) -> tuple[torch.Tensor, ...]:
        items = [self.sample() for _ in range(n)]
        return tuple(torch.from_numpy(np.stack(parts)) for parts in zip(*items))


def build_val_set(volumes: list[dict], factors: list[int], n_side: int) -> list[dict]:
    """Every k-th slice kept (each offset), the others restored; first/last k slices excluded, full slices."""
    items = []
    for vol in volumes:
        arr, dz = vol["array"], vol["dz"]
        nz = arr.shape[0]
        for k in factors:
            for offset in range(k):
                known = np.arange(offset, nz, k)
                if len(known) < 2:
                    continue
                kf = known.astype(float)
                targets = [t for t in range(max(known[0] + 1, k), min(known[-1], nz - k)) if (t - offset) % k]
                if not targets:
                    continue
                base = spline_at(kf, arr[known], np.array(targets, float))
                lin = spline_at(kf, arr[known], np.array(targets, float), "linear")
                for t, b, li in zip(targets, base, lin):
                    ctx, pos = context_arrays(kf, arr[known], float(t), dz, n_side)
                    items.append({"k": k, "ctx": ctx, "pos": pos, "base": b[None], "target": arr[t][None],
                                  "linear": li[None]})
    return items


def psnr_hu(mse_norm: float) -> float:
    """PSNR (data range 4095 HU) from a mean squared error in normalized units (HU/1000)."""
    mse = max(mse_norm * 1e6, 1e-12)
    return 10 * math.log10(4095.0 ** 2 / mse)


@torch.no_grad()
def validate(generator: torch.nn.Module, items: list[dict], device: torch.device, batch: int = 16,
             amp: bool = False) -> dict:
    """PSNR of the generator and of cubic (the base) per factor, and the mean gain (the selection metric);
    ``amp``: the generator runs under autocast (CUDA)."""
    generator.eval()
    forward = amp_call(generator, device, amp)
    sums: dict[int, list[float]] = {}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        ctx = torch.from_numpy(np.stack([c["ctx"] for c in chunk])).to(device)
        base = torch.from_numpy(np.stack([c["base"] for c in chunk])).to(device)
        pos = torch.from_numpy(np.stack([c["pos"] for c in chunk])).to(device)
        tgt = torch.from_numpy(np.stack([c["target"] for c in chunk])).to(device)
        lin = torch.from_numpy(np.stack([c["linear"] for c in chunk])).to(device)
        x, (h, w) = pad_to_multiple(torch.cat([ctx, base, lin], 1), generator.multiple, -1.024)
        n = ctx.shape[1]
        pred = forward(x[:, :n], x[:, n:n + 1], pos, x[:, n + 1:])[..., :h, :w].clamp(-1.024, 3.071)
        for c, p, b, t, li in zip(chunk, pred, base, tgt, lin):
            s = sums.setdefault(c["k"], [0.0, 0.0, 0, 0.0])
            s[0] += float(((p - t) ** 2).mean())
            s[1] += float(((b.clamp(-1.024, 3.071) - t) ** 2).mean())
            s[2] += 1
            s[3] += float(((li.clamp(-1.024, 3.071) - t) ** 2).mean())
    generator.train()
    result = {}
    for k, (g, c, n, li) in sorted(sums.items()):
        result[f"k{k}_psnr_gan"] = psnr_hu(g / n)
        result[f"k{k}_psnr_cubic"] = psnr_hu(c / n)
        result[f"k{k}_psnr_linear"] = psnr_hu(li / n)
    gains = [result[f"k{k}_psnr_gan"] - result[f"k{k}_psnr_cubic"] for k in sums]
    result["gain_db"] = float(np.mean(gains)) if gains else 0.0
    return result


# ----------------------------------------------------------------------------- export
def export_generator(state: dict, config: dict, out_dir: Path, extra_training: dict | None = None,
                     metrics: dict | None = None) -> Path:
    """Pruning made permanent, float16 safetensors + model card in ``out_dir``; returns the card path."""
    gen = build_models(config)[0]
    if any(k.endswith("weight_orig") for k in state):
        apply_magnitude_pruning(gen, 0.1)  # create the reparametrisation, then load masks + weights
    gen.load_state_dict(state)
    make_permanent(gen)
    report = sparsity_report(gen)
    card = ModelCard(
        name=config["model_name"], task="interpolation", architecture=GENERATOR_ARCH,
        arch_args={k: config[k] for k in ("n_side", "base_channels", "levels", "pos_scale_mm", "residual_scale",
                                          "use_linear")},
        preprocessing={"hu_clip": [-1024, 3071], "scale": "HU/1000", "base": "cubic B-spline along z",
                       "output": "base + residual", "max_gap_mm": config["max_gap_mm"],
                       "min_gap_mm": config["min_gap_mm"],
                       "context": f"{config['n_side']} acquired slices each side + distances in mm"},
        training={**(extra_training or {}), "data_notes": config.get("data_notes", ""), "config": config, "parameters": report["parameters"],
                  "nonzero_parameters": report["nonzero_parameters"], "wp_sparsity": round(report["wp_sparsity"], 4)},
        metrics=metrics or {}, license="Apache-2.0", version=str(config["model_version"]))
    return save_model(gen.state_dict(), card, out_dir, half=True)


# ----------------------------------------------------------------------------- training
def make_g_opt(gen: SculptorGenerator, config: dict, lr: float) -> torch.optim.Optimizer:
    """Adam (β1 0.5 as in pix2pix); the cubic/linear blend weights get ``blend_lr_mult``× the learning rate."""
    blend = [p for n, p in gen.named_parameters() if n.startswith("blend.")]
    rest = [p for n, p in gen.named_parameters() if not n.startswith("blend.")]
    mult = float(config["blend_lr_mult"])
    groups = [{"params": rest, "lr": lr, "lr_mult": 1.0}]
    if blend:
        groups.append({"params": blend, "lr": lr * mult, "lr_mult": mult})
    return torch.optim.Adam(groups, lr=lr, betas=(0.5, 0.999))


def make_recon_loss(config: dict):
    kind = config["recon_loss"]
    if kind == "l1":
        return F.l1_loss
    if kind == "mse":
        return F.mse_loss
    if kind == "l1+mse":
        w = float(config["mse_weight"])
        return lambda a, b: F.l1_loss(a, b) + w * F.mse_loss(a, b)
    raise SystemExit(f"unknown recon_loss {kind!r} (l1, mse, l1+mse)")


def make_d_opt(disc: PatchDiscriminator, config: dict) -> torch.optim.Optimizer:
    """Adam for the discriminator (β1 0.5 as in pix2pix) at ``d_lr``."""
    return torch.optim.Adam(disc.parameters(), lr=config["d_lr"], betas=(0.5, 0.999))


def gan_step(g_net: torch.nn.Module, d_net: torch.nn.Module, g_opt: torch.optim.Optimizer,
             d_opt: torch.optim.Optimizer, g_scaler: torch.amp.GradScaler, d_scaler: torch.amp.GradScaler,
             batch: Sequence[torch.Tensor], recon: Callable, adv_weight: float, info: DistInfo,
             amp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Phase I step (Algorithm 1) on a device batch (ctx, pos, base, target, linear): the LSGAN
    discriminator step (skipped when ``adv_weight`` is 0: the warm-up), then the generator step on
    ``recon`` + ``adv_weight``·adversarial loss. The nets may be DDP-wrapped; the generator step calls the
    unwrapped discriminator (no gradient sync for D there). Returns the 0-dim (reconstruction,
    discriminator, generator) losses; the discriminator's is 0 without its step."""
    ctx, pos, base, target, linear = batch
    with autocast(info, amp):
        fake = g_net(ctx, base, pos, linear)
    d_loss = torch.zeros((), device=info.device)
    if adv_weight > 0:  # a. discriminator step (LSGAN), real and synthesized slices in one forward
        d_opt.zero_grad(set_to_none=True)
        with autocast(info, amp):
            d_real, d_fake = d_net(torch.cat([ctx, ctx]), torch.cat([target, fake.detach()])).chunk(2)
            d_loss = 0.5 * (((d_real.float() - 1) ** 2).mean() + (d_fake.float() ** 2).mean())
        scaled_step(d_loss, d_opt, d_scaler)
    # b. generator step: reconstruction + adversarial
    g_opt.zero_grad(set_to_none=True)
    with autocast(info, amp):
        r_loss = recon(fake.float(), target)
        loss = r_loss
        if adv_weight > 0:
            disc = unwrap(d_net)
            for p in disc.parameters():
                p.requires_grad_(False)
            adv = ((disc(ctx, fake).float() - 1) ** 2).mean()
            for p in disc.parameters():
                p.requires_grad_(True)
            loss = loss + adv_weight * adv
    scaled_step(loss, g_opt, g_scaler)
    return r_loss, d_loss, loss


def build_models(config: dict) -> tuple[SculptorGenerator, PatchDiscriminator]:
    gen = SculptorGenerator(n_side=config["n_side"], base_channels=config["base_channels"], levels=config["levels"],
                            pos_scale_mm=config["pos_scale_mm"], residual_scale=config["residual_scale"],
                            use_linear=config["use_linear"])
    disc = PatchDiscriminator(n_side=config["n_side"], channels=config["d_channels"], layers=config["d_layers"])
    return gen, disc


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="JSON/YAML config file (keys as in DEFAULTS)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--out", default=str(ROOT / "training" / "runs" / "interpolation"), help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--export", default=None, metavar="DIR", help="export the best generator here at the end")
    p.add_argument("--export-only", action="store_true", help="only export RUN_DIR/best.pt to --export")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    run_dir = Path(args.out)
    saved = run_dir / "run.json"
    if (args.resume or args.export_only) and saved.is_file() and not args.config:
        config = load_config(DEFAULTS, None, None)
        config.update(json.loads(saved.read_text(encoding="utf-8"))["config"])
        config = load_config(config, None, args.set)
    else:
        config = load_config(DEFAULTS, args.config, args.set)
    command = "python training/train_interpolation.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    if args.export_only:
        if not args.export:
            raise SystemExit("--export-only needs --export DIR")
        best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
        record = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
        train_cmd = (run_dir / "command.txt").read_text(encoding="utf-8").strip() if (run_dir / "command.txt").is_file() else None
        card = export_generator(best["generator"], config, Path(args.export),
                                {"command": train_cmd, "export_command": command, "best_epoch": best.get("epoch"),
                                 "pruned": best.get("pruned"), "validation": best.get("val"),
                                 "git_revision": record.get("git_revision"), "data": record.get("data")}, None)
        print(f"exported {card}")
        return 0

    torch.set_num_threads(int(config["threads"]))
    info: DistInfo = init_distributed(config["device"])
    device = info.device
    seed_everything(int(config["seed"]) + info.rank)
    rng = np.random.default_rng(int(config["seed"]) + 7919 * info.rank)
    log = Logger(run_dir, info)

    train_vols = load_volumes(config["data"]) + make_phantoms(config)
    val_vols = load_volumes(config["val_data"]) if config["val_data"] else make_phantoms(
        {**config, "phantoms": 1, "phantom_z_spacings": [2.0]})
    if not config["val_data"]:
        for v in val_vols:  # a phantom seed not used for training
            from SculptorGANLib.phantom import make_phantom

            ct, _ = make_phantom(tuple(config["phantom_shape"]), (2.5, 2.5, v["dz"]), seed=99)
            v["array"] = normalize(ct.array)
    sampler = SliceSampler(train_vols, config, rng)
    val_items = build_val_set(val_vols, list(config["val_factors"]), int(config["n_side"]))
    write_run_record(run_dir, config, [v["name"] for v in train_vols] + ["val:" + v["name"] for v in val_vols], info)
    if info.is_main:
        with open(run_dir / "command.txt", "a", encoding="utf-8") as handle:
            handle.write(command + "\n")

    gen, disc = build_models(config)
    gen.to(device)
    disc.to(device)
    g_opt = make_g_opt(gen, config, float(config["lr"]))
    d_opt = make_d_opt(disc, config)
    amp = bool(config["amp"])
    g_scaler, d_scaler = grad_scaler(info, amp), grad_scaler(info, amp)
    state = {"epoch": 0, "best": -float("inf"), "since_best": 0, "pruned": False, "prune_epoch": None,
             "elapsed": 0.0, "lr": float(config["lr"]), "plateau": 0, "plateau_best": -float("inf")}
    ckpt = load_checkpoint(run_dir / "last.pt", device) if args.resume else None
    if ckpt is not None:
        if ckpt["state"]["pruned"]:
            apply_magnitude_pruning(gen, float(config["prune_sparsity"]))
            g_opt = make_g_opt(gen, config, float(config["lr"]))
        gen.load_state_dict(ckpt["generator"])
        disc.load_state_dict(ckpt["discriminator"])
        g_opt.load_state_dict(ckpt["g_opt"])
        d_opt.load_state_dict(ckpt["d_opt"])
        restore_scaler(g_scaler, ckpt.get("g_scaler"))  # absent in checkpoints written before AMP
        restore_scaler(d_scaler, ckpt.get("d_scaler"))
        state.update(ckpt["state"])
        asked = override_keys(args.set)  # --set lr=X / d_lr=X on a resume: train at X from now on
        if "lr" in asked:
            state["lr"] = float(config["lr"])
            for group in g_opt.param_groups:
                group["lr"] = state["lr"] * group.get("lr_mult", 1.0)
        if "d_lr" in asked:
            for group in d_opt.param_groups:
                group["lr"] = float(config["d_lr"])
        ranks = ckpt.get("rng_ranks") or [{"rng": ckpt["rng"], "np_generator": ckpt["np_generator"]}]  # older runs
        # each rank's slice-sampler state rides along as the "extra" ("np_generator" in older checkpoints)
        extra = restore_rng_states([{"rng": r["rng"], "extra": r.get("extra", r.get("np_generator"))} for r in ranks], info)
        if extra is not None:
            rng.bit_generator.state = json.loads(extra)
        log(f"resumed from {run_dir / 'last.pt'} at epoch {state['epoch']}")
    g_ddp, d_ddp = wrap_ddp(gen, info), wrap_ddp(disc, info)
    log(f"generator {count_parameters(gen)} parameters, discriminator {count_parameters(disc)}; "
        f"{len(train_vols)} training volumes, {len(val_items)} validation slices; device {device}, "
        f"world size {info.world_size}")

    budget = (args.max_minutes or float("inf")) * 60
    start = time.time() - state["elapsed"]
    iters = max(1, int(config["iters_per_epoch"]) // info.world_size)
    bs, workers = int(config["batch_size"]), int(config["num_workers"])
    loader = seeded_loader(SeededDataset(sampler.draw, iters * bs * info.world_size, int(config["seed"])),
                           iters, bs, info, int(config["seed"]), workers) if workers > 0 else None
    recon = make_recon_loss(config)
    stop_reason = "max_epochs"
    while state["epoch"] < int(config["max_epochs"]):
        epoch = state["epoch"]
        use_adv = config["adv_weight"] > 0 and epoch >= int(config["adv_start_epoch"])
        adv_weight = config["adv_weight"] if use_adv else 0.0
        totals = np.zeros(3)
        # in-process: one stream continued across epochs (saved per rank); workers: a stream per epoch
        batches = epoch_batches(loader, epoch) if loader else iter(lambda: sampler.batch(bs), None)
        for _ in range(iters):
            batch = [t.to(device, non_blocking=True) for t in next(batches)]
            losses = gan_step(g_ddp, d_ddp, g_opt, d_opt, g_scaler, d_scaler, batch, recon, adv_weight, info, amp)
            totals += [value.item() for value in losses]
        del batches  # DataLoader workers of this epoch end here
        totals /= iters
        state["epoch"] = epoch = epoch + 1
        state["elapsed"] = broadcast_object(time.time() - start, info)  # DDP: one clock, same decisions
        recon_mean = mean_across_ranks(totals[0], info)
        val = validate(unwrap(g_ddp), val_items, device, amp=amp) if epoch % int(config["val_every"]) == 0 else None
        val = broadcast_object(val, info)  # DDP: BatchNorm statistics differ per rank; rank 0's metrics decide
        msg = f"epoch {epoch} recon {recon_mean:.5f} d {totals[1]:.4f} lr {state['lr']:.2e}"
        if val:
            msg += " | " + " ".join(f"{k} {v:.3f}" for k, v in val.items())
            if val["gain_db"] > state["best"]:
                state.update(best=val["gain_db"], since_best=0)
                save_checkpoint(run_dir / "best.pt", {"generator": unwrap(g_ddp).state_dict(), "epoch": epoch,
                                                      "val": val, "pruned": state["pruned"]}, info)
                msg += " *"
            else:
                state["since_best"] += 1
            # reduce LR ×plateau_factor after plateau_patience epochs without improvement
            if val["gain_db"] > state["plateau_best"] + 1e-4:
                state.update(plateau_best=val["gain_db"], plateau=0)
            else:
                state["plateau"] += 1
                if state["plateau"] >= int(config["plateau_patience"]):
                    state.update(lr=state["lr"] * float(config["plateau_factor"]), plateau=0)
                    for group in g_opt.param_groups:
                        group["lr"] = state["lr"] * group.get("lr_mult", 1.0)
        log(msg)
        # pruning (once), then fine-tuning
        early = state["since_best"] >= int(config["early_stop"])
        timed = state["elapsed"] > float(config["prune_time_fraction"]) * budget
        if not state["pruned"] and config["prune_sparsity"] > 0 and (
                epoch == int(config["prune_epoch"]) or early or timed
                or epoch >= int(config["max_epochs"]) - int(config["prune_finetune_epochs"])):
            apply_magnitude_pruning(unwrap(g_ddp), float(config["prune_sparsity"]))
            g_opt = make_g_opt(gen, config, state["lr"])
            g_ddp = wrap_ddp(gen, info)
            state.update(pruned=True, prune_epoch=epoch, best=-float("inf"), since_best=0, plateau=0,
                         plateau_best=-float("inf"))
            log(f"pruned generator to {config['prune_sparsity']:.0%} WP-block sparsity: {sparsity_report(gen)}; "
                f"fine-tuning (best checkpoint now chosen among pruned ones)")
        elif early:
            stop_reason = "early_stop"
        save_checkpoint(run_dir / "last.pt", {
            "generator": unwrap(g_ddp).state_dict(), "discriminator": unwrap(d_ddp).state_dict(),
            "g_opt": g_opt.state_dict(), "d_opt": d_opt.state_dict(), "state": state,
            "g_scaler": g_scaler.state_dict(), "d_scaler": d_scaler.state_dict(),
            "rng_ranks": gather_rng_states(info, extra=json.dumps(rng.bit_generator.state))}, info)
        if state["pruned"] and state["prune_epoch"] is not None and \
                epoch - state["prune_epoch"] >= int(config["prune_finetune_epochs"]):
            stop_reason = "pruned and fine-tuned"
            break
        if stop_reason == "early_stop":
            break
        if broadcast_object(time.time() - start > budget, info):  # DDP: all ranks stop together
            stop_reason = "max_minutes"
            break
    log(f"stopped: {stop_reason} after {state['epoch']} epochs, {state['elapsed'] / 60:.1f} min; best gain "
        f"{state['best']:.3f} dB")
    if args.export and info.is_main and (run_dir / "best.pt").is_file():
        best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
        card = export_generator(best["generator"], config, Path(args.export),
                                {"command": command, "best_epoch": best["epoch"], "validation": best["val"],
                                 "data": [v["name"] for v in train_vols], "val_data": [v["name"] for v in val_vols]})
        log(f"exported {card}")
    cleanup_distributed(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
