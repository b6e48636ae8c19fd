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


def evaluate_pair(pred: LabelVolume, truth: LabelVolume) -> dict:
    """Metrics for one case (prediction resampled onto the truth grid when the grids differ)."""
    arr, resampled = _on_truth_grid(pred, truth)
    result = label_metrics(arr, truth.array, truth.spacing)
    result["resampled"] = resampled
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
        lines += [f"**{cls.capitalize()}**", "",
                  "| model | cases | Dice | Jaccard | Accuracy | Precision | Recall | HD (mm) | HD95 (mm) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, s in summaries.items():
            if cls not in s:
                continue
            n = s[cls]["dice"]["n"]
            lines.append(f"| {name} | {n} | " + " | ".join(_fmt(s[cls][m], m) for m in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def write_evaluation(per_case: list[dict], out_dir: str | os.PathLike, name: str = "model", plots: bool = True) -> dict:
    """per_case.csv/json, summary.json/md and box plots in ``out_dir``; returns the summary dict."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from ..core.errors import OutputError

        raise OutputError(f"{out_dir}: cannot create output folder ({exc.strerror})") from None
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
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(comparison_table({name: summary}), encoding="utf-8")
    if plots:
        summary["plots"] = [str(p) for p in boxplots(per_case, out_dir, name)]
    return summary


def evaluate_files(pred_paths: str | os.PathLike, gt_paths: str | os.PathLike, out_dir: str | os.PathLike,
                   name: str = "model", plots: bool = True) -> dict:
    """Evaluate a prediction file/folder against a ground-truth file/folder; write results to ``out_dir``.

    Returns the summary dict (also in ``summary.json``) with ``per_case`` added.
    """
    per_case = []
    for case, p, g in pair_files(pred_paths, gt_paths):
        truth, pred = read_labels(g), read_labels(p)
        result = evaluate_pair(pred, truth)
        result.update(case=case, prediction=str(p), truth=str(g), has_tumor=bool((truth.array == 2).any()))
        per_case.append(result)
    summary = write_evaluation(per_case, out_dir, name=name, plots=plots)
    summary["per_case"] = per_case
    return summary
