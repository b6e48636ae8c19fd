"""A tiny segmentation training run: the loss falls, the run resumes, and the export loads and segments."""
import json

import numpy as np
import pytest

from SculptorGANLib.synthetic import make_layout

from training import train_segmentation as ts


def image_case(rng, shape=(24, 40, 40)):
    labels = np.zeros(shape, np.uint8)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for cx in (10, 30):
        labels[((z - 12) / 8.0) ** 2 + ((y - 20) / 6.0) ** 2 + ((x - cx) / 5.0) ** 2 <= 1] = 1
    labels[((z - 12) / 3.0) ** 2 + ((y - 20) / 3.0) ** 2 + ((x - 34) / 3.0) ** 2 <= 1] = 2
    image = np.where(labels == 1, 180.0, np.where(labels == 2, 60.0, -80.0)).astype(np.float32)
    image += rng.normal(0, 10, shape).astype(np.float32)
    return {"image": image, "labels": labels}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez_compressed(root / f"img_{i}.npz", **image_case(rng))
    lab = image_case(rng)["labels"]
    np.savez_compressed(root / "case_00001_v0.npz", labels=lab, layout=make_layout(lab, (6.0, 6.0, 6.0), rng))
    return root


def args_for(cache, out, *extra):
    overrides = {"data": str(cache), "val_cases": ["img_2"], "features": [4, 8], "patch": [16, 32, 32],
                 "batch_size": 2, "iters_per_epoch": 6, "lr": 0.01, "roi": [16, 32, 32], "aug_elastic_prob": 0.0,
                 "aug_flip_prob": 0.0, "aug_gamma_prob": 0.0, "aug_contrast_prob": 0.0, "aug_noise_prob": 0.0,
                 "aug_rotate_deg": 0.0, "aug_scale": 0.0, "sparsity": 0.5, "prune_start": 12, "prune_every": 3,
                 "prune_steps": 2, "spacing": [6.0, 6.0, 6.0], "checkpoint_minutes": 100.0}
    argv = ["--out", str(out)]
    for k, v in overrides.items():
        argv += ["--set", f"{k}={json.dumps(v)}"]
    return argv + list(extra)


def test_tiny_run_lowers_loss_resumes_prunes_and_exports(cache, tmp_path):
    run = tmp_path / "run"
    result = ts.main(args_for(cache, run, "--max-iters", "12"))
    hist = result["state"]["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert (run / "last.pt").is_file() and (run / "run.json").is_file()
    # resume: continues from iteration 12 and reaches the pruning phase
    result2 = ts.main(args_for(cache, run, "--resume", "--max-iters", "24"))
    state = result2["state"]
    assert state["iteration"] == 24
    assert state["epoch"] == 4
    assert state["sparsity"] == pytest.approx(0.5)
    # export the last checkpoint to safetensors + card, then load it through the registry and segment
    models = tmp_path / "models"
    ts.main(["--out", str(run), "--export", str(models), "--export-which", "last", "--set", "name=tiny_kidney"])
    from SculptorGANLib.nn.cards import find_model, load_weights
    from SculptorGANLib.nn.pruning import sparsity_report
    from SculptorGANLib.nn.wpunet import build_model
    from SculptorGANLib.segment.stage import segment
    from SculptorGANLib.core.volume import CTVolume, Geometry

    card = find_model("segmentation", str(models / "tiny_kidney.json"))
    # the card's validation metrics are those of the exported (last) weights, not of the best-scoring ones
    assert card.metrics["validation"]["score"] == pytest.approx(state["history"][-1]["score"])
    assert card.weights_path.suffix == ".safetensors" and card.preprocessing["spacing"] == [6.0, 6.0, 6.0]
    net = build_model(card.architecture, card.arch_args, fast_layout=False)
    net.load_state_dict({k: v.float() for k, v in load_weights(card).items()})
    assert sparsity_report(net)["wp_sparsity"] == pytest.approx(0.5, abs=0.02)
    case = image_case(np.random.default_rng(5))
    labels, info = segment(CTVolume(case["image"], Geometry((6.0, 6.0, 6.0))), model=str(card.path), device="cpu")
    assert labels.shape == case["labels"].shape and info["model"] == "tiny_kidney"


def test_resume_with_explicit_lr_sets_it_even_after_the_plateau_lowered_it(cache, tmp_path):
    import torch

    run = tmp_path / "run"
    ts.main(args_for(cache, run, "--max-iters", "6"))
    ckpt = torch.load(run / "last.pt", weights_only=False)
    for group in ckpt["optimizer"]["param_groups"]:  # as if the plateau rule had lowered the LR
        group["lr"] = 0.001
    torch.save(ckpt, run / "last.pt")
    kept = ts.main(["--out", str(run), "--resume", "--max-iters", "12"])["state"]["history"][-1]["lr"]
    assert kept == pytest.approx(0.001)  # no --set lr: the lowered LR carries on
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    # --set lr=0.01 is the run's own starting LR, and still means "train at 0.01 from now on"
    asked = ts.main(args_for(cache, run, "--resume", "--max-iters", "18"))["state"]["history"][-1]["lr"]
    assert asked == pytest.approx(0.01)


def test_checkpoint_validation_matches_the_weights_in_the_checkpoint():
    history = [{"iteration": 30, "score": 0.9, "kidney_dice": 0.95, "tumor_dice": 0.8, "loss": 0.1},
               {"iteration": 50, "score": 0.7, "kidney_dice": 0.85, "tumor_dice": 0.5, "loss": 0.2}]
    last = {"best_metrics": {"score": 0.9}, "best_epoch": 3, "epoch": 5, "iteration": 50, "history": history}
    assert ts.checkpoint_validation(last) == {"kidney_dice": 0.85, "tumor_dice": 0.5, "score": 0.7}
    best = dict(last, epoch=3, iteration=30, history=history[:1])
    assert ts.checkpoint_validation(best) == {"score": 0.9}
    unvalidated = dict(last, iteration=60)  # written between validations
    assert ts.checkpoint_validation(unvalidated) == {}


def _old_crop_patch(arrays, labels, size, rng, fg_prob, pad_value):
    """The trainer's crop_patch before it used training.cache.sample_patch (reference for the test below)."""
    shape, size = np.asarray(labels.shape), np.asarray(size)
    if rng.random() < fg_prob and labels.any():
        cls = 2 if (labels == 2).any() and rng.random() < 0.4 else 1
        pts = np.argwhere(labels == cls) if (labels == cls).any() else np.argwhere(labels > 0)
        centre = pts[rng.integers(len(pts))] + rng.integers(-size // 4, size // 4 + 1)
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start, out = centre - size // 2, []
    for arr, pv in zip(arrays, pad_value):
        patch = np.full(tuple(size), pv, dtype=arr.dtype)
        src = [slice(max(0, a), min(s, a + n)) for a, n, s in zip(start, size, shape)]
        dst = [slice(sl.start - a, sl.stop - a) for sl, a in zip(src, start)]
        patch[tuple(dst)] = arr[tuple(src)]
        out.append(patch)
    return out


def test_trainer_patches_are_the_shared_sample_patch():
    """sample_patch(tumor_prob=...) draws the trainer's in-memory patches exactly as its former crop_patch:
    tumor/kidney/other foreground, a case without foreground, patch sizes not divisible by 4, padding."""
    from training.cache import sample_patch
    from training.seg_data import TUMOR_PROB

    rng = np.random.default_rng(1)
    case = image_case(rng)
    no_tumor = {"image": case["image"], "labels": np.where(case["labels"] == 2, 1, case["labels"]).astype(np.uint8)}
    only_tumor = {"image": case["image"], "labels": (case["labels"] == 2).astype(np.uint8) * 2}
    empty = {"image": case["image"], "labels": np.zeros_like(case["labels"])}
    layout = {"layout": case["labels"] * 3, "labels": case["labels"]}
    for c in (case, no_tumor, only_tumor, empty, layout):
        key = "layout" if "layout" in c else "image"
        pad = 0 if key == "layout" else -1024.0
        for size in ((21, 63, 63), (16, 32, 32), (30, 50, 50)):
            for seed in range(40):
                r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
                img, lab = _old_crop_patch([c[key], c["labels"]], c["labels"], size, r1, 0.67, [pad, 0])
                new_img, new_lab, _ = sample_patch(c, size, r2, 0.67, pad, jitter=0.25, tumor_prob=TUMOR_PROB,
                                                   image_key=key)
                assert np.array_equal(img, new_img) and np.array_equal(lab, new_lab) and img.dtype == new_img.dtype
                assert r1.random() == r2.random()  # the generators consumed the same draws


def test_validation_dice_is_overlap_metrics():
    """The trainer's validation Dice is metrics.overlap_metrics' (1 for two empty masks, 0 for one empty)."""
    from SculptorGANLib.measure.metrics import overlap_metrics

    def old_dice(pred, truth):
        s = pred.sum() + truth.sum()
        return float(2 * (pred & truth).sum() / s) if s else 1.0

    rng = np.random.default_rng(0)
    empty = np.zeros((6, 7, 8), bool)
    pairs = [(empty, empty), (empty, ~empty), (~empty, empty)]
    pairs += [(rng.random((6, 7, 8)) < p, rng.random((6, 7, 8)) < q) for p, q in ((0.1, 0.5), (0.5, 0.5), (0.9, 0.01))]
    for pred, truth in pairs:
        assert overlap_metrics(pred, truth)["dice"] == old_dice(pred, truth)
    assert overlap_metrics(empty, empty)["dice"] == 1.0 and overlap_metrics(empty, ~empty)["dice"] == 0.0


def test_init_weights_fine_tunes_from_an_exported_card_keeping_its_sparsity(cache, tmp_path):
    """A new run from a card starts at that card's weights (zeros kept), not from scratch."""
    import torch

    from SculptorGANLib.nn.cards import find_model, load_weights

    first = tmp_path / "first"
    ts.main(args_for(cache, first, "--max-iters", "18"))  # pruned to 50 % by iteration 15
    models = tmp_path / "models"
    ts.main(["--out", str(first), "--export", str(models), "--export-which", "last", "--set", "name=tiny_a"])
    card = find_model("segmentation", str(models / "tiny_a.json"))
    ft = tmp_path / "ft"
    result = ts.main(args_for(cache, ft, "--max-iters", "6", "--set", f"init_weights={json.dumps(str(card.path))}",
                              "--set", "lr=0.0"))
    assert result["state"]["sparsity"] == pytest.approx(0.5)
    start = {k: v.float() for k, v in load_weights(card).items()}
    saved = torch.load(ft / "last.pt", weights_only=True)["model"]
    # lr 0: the fine-tuned weights are the card's (float16 storage: to its precision); BatchNorm running
    # statistics still move in training mode
    weights = [k for k in start if not k.split(".")[-1].startswith(("running_", "num_batches"))]
    assert len(weights) > 10
    for key in weights:
        assert torch.allclose(saved[key].float(), start[key], atol=1e-3), key
    log = (ft / "train.log").read_text()
    assert "initialised from" in log
