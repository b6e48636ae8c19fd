"""Phase I training data: thin CT volumes and phantoms, the random slice-gap sampler, the validation set.

Data entries are files, folders (KiTS19 ``case_*/imaging.nii.gz`` or plain folders of
.nii/.nii.gz/.nrrd/.mha, or a DICOM series folder) or ``FILE:z0:z1`` for slices z0 ≤ z < z1 of a file;
relative paths that do not exist from the working folder are taken from the repository root.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from SculptorGANLib.interpolate.context import context_arrays, normalize_hu, spline_at
from SculptorGANLib.interpolate.learned import LOCAL_KNOTS

ROOT = Path(__file__).resolve().parent.parent


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
    from SculptorGANLib.io.volumes import read_ct

    vols = []
    for path, z0, z1 in expand_data(entries):
        ct = read_ct(path)
        arr = ct.array[slice(z0, z1)]
        vols.append({"name": f"{path.name}[{z0}:{z1}]" if z0 is not None else path.name,
                     "array": normalize_hu(arr), "dz": ct.geometry.spacing[2], "real": True})
    return vols


def make_phantoms(config: dict) -> list[dict]:
    from SculptorGANLib.synthetic.phantom import make_phantom

    vols = []
    for i in range(int(config["phantoms"])):
        dz = float(config["phantom_z_spacings"][i % len(config["phantom_z_spacings"])])
        ct, _ = make_phantom(tuple(config["phantom_shape"]), (2.5, 2.5, dz), seed=1000 + i)
        vols.append({"name": f"phantom_{i}_dz{dz}", "array": normalize_hu(ct.array), "dz": dz, "real": False})
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


def volume_weights(volumes: list[dict], phantom_prob: float) -> np.ndarray:
    """Sampling probability of each volume: phantoms (``real`` False) share ``phantom_prob``, real volumes the
    rest, equally within each kind; equal weights when only one kind is present."""
    real = [i for i, v in enumerate(volumes) if v["real"]]
    fake = [i for i, v in enumerate(volumes) if not v["real"]]
    p = np.zeros(len(volumes))
    if real and fake:
        p[real] = (1 - phantom_prob) / len(real)
        p[fake] = phantom_prob / len(fake)
    else:
        p[:] = 1 / len(volumes)
    return p


class SliceSampler:
    """Random (context, positions, cubic base, target) training patches from thin volumes."""

    def __init__(self, volumes: list[dict], config: dict, rng: np.random.Generator):
        if not volumes:
            raise SystemExit("no training volumes: give data entries or phantoms > 0")
        self.vols, self.cfg, self.rng = volumes, config, rng
        self.p = volume_weights(volumes, config["phantom_prob"])

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




def validation_volumes(config: dict) -> list[dict]:
    """``val_data`` volumes, or (none given) one phantom at 2 mm drawn with a seed not used for training."""
    if config["val_data"]:
        return load_volumes(config["val_data"])
    from SculptorGANLib.synthetic.phantom import make_phantom

    vols = make_phantoms({**config, "phantoms": 1, "phantom_z_spacings": [2.0]})
    for v in vols:
        ct, _ = make_phantom(tuple(config["phantom_shape"]), (2.5, 2.5, v["dz"]), seed=99)
        v["array"] = normalize_hu(ct.array)
    return vols
