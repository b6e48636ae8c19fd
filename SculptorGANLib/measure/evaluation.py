"""Evaluate predicted kidney/tumor labelmaps against ground truth.

``evaluate_files(pred, gt, out_dir)`` takes a file pair or two folders (files matched by name),
computes the paper's six metrics per case and class (kidney = kidney+tumor as in KiTS19, tumor),
and writes ``per_case.csv``, ``per_case.json``, ``summary.json``, ``summary.md`` and box plots like the
paper's Fig. 7 (``boxplot_kidney.png``, ``boxplot_tumor.png``). ``comparison_table`` lays several
models' summaries side by side (the layout of the paper's Tables 3–5).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..io.volumes import read_labels, stem, volume_suffix
from .metrics import METRICS, label_metrics
from ..core.volume import LabelVolume

CLASSES = ("kidney", "tumor")
#: How each class is named in tables: one definition of kidney Dice everywhere (KiTS19: kidney + tumor).
CLASS_TITLES = {"kidney": "Kidney (kidney + tumor, KiTS19)", "tumor": "Tumor"}
_BOX_METRICS = ("dice", "jaccard", "accuracy", "precision", "recall")


def _case_key(path: Path) -> str:
    """Name used to pair files: the stem, or the folder name for KiTS-style case_x/segmentation.nii.gz."""
    s = stem(path)
    if s in ("segmentation", "prediction", "labels") and path.parent.name:
        return path.parent.name
    for suffix in ("_segmentation", "_seg", "_labels", "_pred", "_prediction", "_gt"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    return s


def _label_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and volume_suffix(p) in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".mhd"):
            if stem(p) == "imaging":
                continue
            files.append(p)
    return files


def pair_files(pred: str | os.PathLike, gt: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(case, prediction, truth) triples for a file pair or two folders."""
    pred, gt = Path(pred), Path(gt)
    for p in (pred, gt):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
    if pred.is_file() and gt.is_file():
        return [(_case_key(gt), pred, gt)]
    if pred.is_dir() and gt.is_dir():
        preds = {_case_key(p): p for p in _label_files(pred)}
        gts = {_case_key(p): p for p in _label_files(gt)}
        common = sorted(set(preds) & set(gts))
        if not common:
            raise InputError(f"{pred} and {gt}: no files with matching names")
        return [(c, preds[c], gts[c]) for c in common]
    raise InputError(f"{pred}, {gt}: give two label files or two folders")


def _on_truth_grid(pred: LabelVolume, truth: LabelVolume) -> tuple[np.ndarray, bool]:
    if pred.same_grid(truth):
        return pred.array, False
    from ..segment.preprocess import resample_array

    return resample_array(pred.array, pred.geometry, truth.geometry, truth.shape, label=True), True


def _bounds(volume: LabelVolume) -> tuple[np.ndarray, np.ndarray]:
    nz, ny, nx = volume.shape
    corners = np.array([[i, j, k] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
    points = volume.geometry.index_to_physical(corners)
    return points.min(axis=0), points.max(axis=0)


def grid_warning(pred: LabelVolume, truth: LabelVolume) -> str:
    """'' when both share one grid; else what differs, and whether they overlap in space at all."""
    if pred.same_grid(truth):
        return ""
    a, b = _bounds(pred), _bounds(truth)
    overlap = np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0, None)
    share = float(np.prod(overlap) / max(np.prod(b[1] - b[0]), 1e-9))
    differs = [name for name, x, y in (("shape", pred.shape, truth.shape), ("spacing", pred.spacing, truth.spacing),
                                       ("origin", pred.geometry.origin, truth.geometry.origin),
                                       ("direction", pred.geometry.direction, truth.geometry.direction))
               if not np.allclose(x, y, atol=1e-4)]
    text = f"prediction and reference grids differ ({', '.join(differs)}); the prediction was resampled onto the reference grid"
    if share <= 0:
        return text + "; they do not overlap in space at all (a different patient or the wrong file?)"
    if share < 0.5:
        return text + f"; they overlap in only {share:.0%} of the reference's extent"
    return text


def evaluate_pair(pred: LabelVolume, truth: LabelVolume) -> dict:
    """Metrics for one case (prediction resampled onto the truth grid when the grids differ).

    'kidney' is kidney + tumor (the KiTS19 convention, as everywhere in this project), 'tumor' label 2;
    ``grid_warning`` says how the grids differ ('' when they are the same).
    """
    arr, resampled = _on_truth_grid(pred, truth)
    result = label_metrics(arr, truth.array, truth.spacing)
    result["resampled"] = resampled
    result["grid_warning"] = grid_warning(pred, truth)
    return result


def _finite(values) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], float)
    return arr


def summarize(per_case: list[dict]) -> dict:
    """Mean, standard deviation and median of each metric and class over the cases."""
    out: dict = {"cases": len(per_case)}
    for cls in CLASSES:
        rows = [c[cls] for c in per_case if cls in c and (cls != "tumor" or c.get("has_tumor", True))]
        out[cls] = {}
        for m in METRICS:
            vals = _finite(r[m] for r in rows)
            out[cls][m] = {"mean": float(vals.mean()) if len(vals) else math.nan,
                           "std": float(vals.std()) if len(vals) else math.nan,
                           "median": float(np.median(vals)) if len(vals) else math.nan, "n": int(len(vals))}
    return out


def boxplots(per_case: list[dict], out_dir: Path, title: str = "") -> list[Path]:
    """Box plots of Dice, Jaccard, accuracy, precision and recall per class (cf. the paper's Fig. 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for cls in CLASSES:
        rows = [c[cls] for c in per_case if cls in c and (cls != "tumor" or c.get("has_tumor", True))]
        if not rows:
            continue
        data = [_finite(r[m] for r in rows) for m in _BOX_METRICS]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(_BOX_METRICS) + 1), [m.capitalize() for m in _BOX_METRICS])
        ax.set_ylim(min(0.0, min((d.min() for d in data if len(d)), default=0)), 1.02)
        ax.set_title(f"{title + ' — ' if title else ''}{cls} ({len(rows)} cases)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"boxplot_{cls}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _fmt(stat: dict, metric: str) -> str:
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "–"
    if metric in ("hd", "hd95"):
        return f"{stat['mean']:.2f} ± {stat['std']:.2f}"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def comparison_table(summaries: dict[str, dict]) -> str:
    """Markdown tables (one per class) with one row per model and the six metrics as columns."""
    lines = []
    for cls in CLASSES:
        lines += [f"**{CLASS_TITLES[cls]}**", "",
                  "| model | cases | Dice | Jaccard | Accuracy | Precision | Recall | HD (mm) | HD95 (mm) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, s in summaries.items():
            if cls not in s:
                continue
            n = s[cls]["dice"]["n"]
            lines.append(f"| {name} | {n} | " + " | ".join(_fmt(s[cls][m], m) for m in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def _write_evaluation_files(per_case: list[dict], out_dir: Path, name: str, plots: bool,
                            warnings: list[str]) -> dict:
    with open(out_dir / "per_case.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "class"] + list(METRICS))
        for c in per_case:
            for cls in CLASSES:
                if cls in c:
                    writer.writerow([c["case"], cls] + [f"{c[cls][m]:.6g}" for m in METRICS])
    (out_dir / "per_case.json").write_text(json.dumps(per_case, indent=2) + "\n", encoding="utf-8")
    summary = summarize(per_case)
    summary["name"] = name
    if warnings:
        summary["warnings"] = list(warnings)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    table = comparison_table({name: summary})
    if warnings:
        table += "\n**Warnings**\n\n" + "".join(f"- {w}\n" for w in warnings)
    (out_dir / "summary.md").write_text(table, encoding="utf-8")
    if plots:
        summary["plots"] = [p.name for p in boxplots(per_case, out_dir, name)]
    return summary


def write_evaluation(per_case: list[dict], out_dir: str | os.PathLike, name: str = "model", plots: bool = True,
                     overwrite: bool = False, inputs=(), warnings: list[str] | None = None) -> dict:
    """per_case.csv/json, summary.json/md and box plots in ``out_dir``, all or nothing; returns the summary dict.

    ``out_dir`` is replaced as a whole; a folder holding files we did not write is refused unless ``overwrite``.
    """
    from ..core.errors import OutputError
    from ..io.atomic import staged_output_dir

    out_dir = Path(out_dir)
    with staged_output_dir(out_dir, inputs, overwrite=overwrite, kind="evaluation") as stage:
        try:
            summary = _write_evaluation_files(per_case, stage, name, plots, list(warnings or []))
        except OSError as exc:
            raise OutputError(f"{out_dir}: cannot be written ({exc.strerror or exc})") from None
    if plots:
        summary["plots"] = [str(out_dir / p) for p in summary["plots"]]
    return summary


def evaluate_files(pred_paths: str | os.PathLike, gt_paths: str | os.PathLike, out_dir: str | os.PathLike,
                   name: str = "model", plots: bool = True, overwrite: bool = False) -> dict:
    """Evaluate a prediction file/folder against a ground-truth file/folder; write results to ``out_dir``.

    Returns the summary dict (also in ``summary.json``) with ``per_case`` added and ``warnings`` (cases whose
    grids differ, named by file).
    """
    from ..io.atomic import check_output_dir, check_replaceable

    check_replaceable(check_output_dir(out_dir, [pred_paths, gt_paths]), overwrite)
    per_case, warnings = [], []
    for case, p, g in pair_files(pred_paths, gt_paths):
        truth, pred = read_labels(g), read_labels(p)
        result = evaluate_pair(pred, truth)
        result.update(case=case, prediction=str(p), truth=str(g), has_tumor=bool((truth.array == 2).any()))
        if result["grid_warning"]:
            warnings.append(f"{p} vs {g}: {result['grid_warning']}")
        per_case.append(result)
    summary = write_evaluation(per_case, out_dir, name=name, plots=plots, overwrite=overwrite,
                               inputs=[pred_paths, gt_paths], warnings=warnings)
    summary["per_case"] = per_case
    return summary
