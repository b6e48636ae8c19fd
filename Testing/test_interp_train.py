"""The fast generator's trainer: slab profiles, samples, train → resume → export → the stage runs the card."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training import interp_fast
from SculptorGANLib.interpolate.context import slab_weights
from training.interp_sampler import Sampler

torch.set_num_threads(1)
TINY = {"patch": 32, "batch_size": 2, "channels": [4, 8, 8], "phantoms": 2, "phantom_shape": [16, 40, 40]}


def test_slab_profile_weights():
    ids, w = slab_weights(10.0, 3.0, 40)
    assert w.sum() == pytest.approx(1.0) and list(ids) == [8, 9, 10, 11, 12]
    assert w[0] == pytest.approx(w[-1]) and w[2] == w.max()  # symmetric, peaked at the centre
    ids, w = slab_weights(0.0, 1.0, 40)  # at the edge: clipped onto the volume, still a unit profile
    assert ids.min() == 0 and w.sum() == pytest.approx(1.0)


def test_sampler_drop_and_slab_samples():
    rng = np.random.default_rng(0)
    vol = {"name": "v", "array": rng.normal(0, 0.3, (30, 40, 40)).astype(np.float32), "dz": 2.0, "real": True}
    for slab, thick_prob in ((0.0, 0.0), (1.0, 1.0)):
        cfg = {**interp_fast.CFG, **TINY, "slab_prob": slab, "thickness_known_prob": thick_prob}
        ctx, pos, cub, tgt, lin, thick = Sampler([vol], cfg, np.random.default_rng(1)).batch(6)
        assert ctx.shape == (6, 4, 32, 32) and cub.shape == tgt.shape == lin.shape == (6, 1, 32, 32)
        assert (pos[:, :2] < 0).all() and (pos[:, 2:] > 0).all()  # two slices below, two above the target
        if slab:
            assert (thick > 0).all()  # told the slab thickness
        else:
            assert (thick == 0).all()


def test_in_plane_restacked_volumes_give_wide_gaps_in_mm():
    from SculptorGANLib.interpolate.adapt import in_plane_stacks

    rng = np.random.default_rng(0)
    arr = rng.normal(0, 0.3, (30, 100, 100)).astype(np.float32)
    vol = {"name": "v", "array": arr, "dz": 5.0, "real": True}
    restacked = [{"name": f"v_{a}", "array": st, "dz": step, "real": True, "inplane": True}
                 for (st, step), a in zip(in_plane_stacks(arr, (0.8, 0.8)), "yx")]
    cfg = {**interp_fast.CFG, **TINY, "slab_prob": 0.0, "irregular_prob": 0.0}
    plain = Sampler([vol], cfg, np.random.default_rng(3)).batch(4)
    unused = Sampler([vol] + restacked, cfg, np.random.default_rng(3)).batch(4)  # inplane_prob 0: same stream
    for a, b in zip(plain, unused):
        torch.testing.assert_close(a, b)
    _, pos, _, _, _, _ = Sampler([vol] + restacked, {**cfg, "inplane_prob": 1.0}, np.random.default_rng(3)).batch(16)
    gaps = (pos[:, 2] - pos[:, 1]).numpy()
    assert np.allclose(np.round(gaps / 0.8), gaps / 0.8, atol=1e-4)  # rows of 0.8 mm stand in for slices
    assert gaps.max() <= cfg["max_gap_mm"] + 1e-4 and gaps.max() > 5.0  # gaps as wide as real slice gaps


def test_coarse_pixel_copies_of_fine_scans(tmp_path):
    from SculptorGANLib.core.volume import CTVolume, Geometry
    from SculptorGANLib.io.volumes import write_volume

    arr = np.arange(2 * 6 * 7, dtype=np.float32).reshape(2, 6, 7)
    coarse = interp_fast.block_mean(arr, 3)
    assert coarse.shape == (2, 2, 2) and coarse[1, 1, 0] == pytest.approx(arr[1, 3:6, 0:3].mean())
    rng = np.random.default_rng(0)
    fine = CTVolume(rng.normal(0, 300, (20, 60, 60)).astype(np.float32), Geometry(spacing=(0.75, 0.75, 2.0)))
    write_volume(fine, tmp_path / "fine.nii.gz")
    write_volume(CTVolume(fine.array[:, :20, :20], Geometry(spacing=(3.0, 3.0, 2.0))), tmp_path / "coarse.nii.gz")
    series = {"fine": tmp_path / "fine.nii.gz", "coarse": tmp_path / "coarse.nii.gz"}
    vols = interp_fast.load_volumes(series, [], 0, lowres_mm=3.0)
    assert [v["name"] for v in vols] == ["fine", "fine_lowres", "coarse"]  # only scans with much finer pixels
    assert vols[1]["array"].shape == (20, 15, 15) and vols[1]["dz"] == 2.0
    cfg = {**interp_fast.CFG, **TINY, "patch": 12, "slab_prob": 0.0, "irregular_prob": 0.0}
    plain = Sampler([vols[0]], cfg, np.random.default_rng(3)).batch(4)
    unused = Sampler(vols[:2], cfg, np.random.default_rng(3)).batch(4)  # lowres_prob 0: never drawn, same stream
    for a, b in zip(plain, unused):
        torch.testing.assert_close(a, b)
    marked = [vols[0], {**vols[1], "array": np.full_like(vols[1]["array"], 0.5)}]
    *_, tgt, _, _ = Sampler(marked, {**cfg, "lowres_prob": 1.0}, np.random.default_rng(3)).batch(8)
    assert torch.allclose(tgt.amax(dim=(1, 2, 3)), tgt.amin(dim=(1, 2, 3)))  # every sample from the coarse copy


def test_train_resume_export_and_run(tmp_path):
    from SculptorGANLib.core.volume import CTVolume
    from SculptorGANLib.interpolate.stage import interpolate
    from SculptorGANLib.nn.cards import find_model
    from SculptorGANLib.nn.fastgen import FAST_ARCH
    from SculptorGANLib.synthetic.phantom import make_phantom

    run = tmp_path / "run"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    assert interp_fast.main(["--out", str(run), "--no-real", "--steps", "20", *sets]) == 0
    first = torch.load(run / "final.pt", weights_only=False)
    assert first["step"] == 20 and (run / "last.pt").is_file()
    log = (run / "log.txt").read_text()
    assert "step 20 " in log and "ratio" in log
    assert interp_fast.main(["--out", str(run), "--no-real", "--steps", "30", *sets]) == 0  # resumes at 20
    assert "resumed at step 20" in (run / "log.txt").read_text()
    assert torch.load(run / "final.pt", weights_only=False)["step"] == 30
    lopo = {"totalseg": {"4": {"cubic": {"psnr": 35.0}, "default": {"psnr": 35.5}}}}
    (tmp_path / "lopo.json").write_text(json.dumps(lopo))
    assert interp_fast.main(["--out", str(run), "--export", str(tmp_path / "m"), "--lopo-json",
                             str(tmp_path / "lopo.json"), "--name", "tiny_fast"]) == 0
    card = find_model("interpolation", str(tmp_path / "m" / "tiny_fast.json"))
    assert card.architecture == FAST_ARCH and len(card.sha256) == 64
    assert card.metrics["leave_one_patient_out"] == lopo and card.training["steps"] == 30
    assert card.training["command"].startswith("python -m training.interp_fast")
    ct, _ = make_phantom((12, 40, 40), (2.5, 2.5, 4.0), seed=2)
    out, info = interpolate(CTVolume(ct.array, ct.geometry), factor=2, method="gan", model=str(card.path))
    assert info["model"] == "tiny_fast" and info["slices_by_method"] == {"gan": 11}
    np.testing.assert_array_equal(out.array[::2], ct.array)
    grown = tmp_path / "grown"  # a new run started from the first one's weights, one refinement block wider
    assert interp_fast.main(["--out", str(grown), "--no-real", "--steps", "10", "--init-from", str(run / "final.pt"),
                             "--set=refine_blocks=1", *sets]) == 0
    assert json.loads((grown / "run.json").read_text())["init_from"] == str(run / "final.pt")
    (tmp_path / "notes.txt").write_text("not weights\n")
    for bad, why in ((tmp_path / "missing.pt", "not a trained run's final.pt"),
                     (tmp_path / "notes.txt", "not a trained run's final.pt"),
                     (run / "final.pt", "does not fit the generator")):
        extra = ["--set=channels=[4,8,12]"] if bad.suffix == ".pt" and bad.exists() else []
        with pytest.raises(SystemExit, match=why):
            interp_fast.main(["--out", str(tmp_path / "bad"), "--no-real", "--steps", "10", "--init-from", str(bad),
                              *sets, *extra])
        assert not (tmp_path / "bad").exists()  # nothing written
    assert interp_fast.main(["--out", str(grown), "--export", str(tmp_path / "g"), "--name", "tiny_grown"]) == 0
    big = find_model("interpolation", str(tmp_path / "g" / "tiny_grown.json"))
    assert big.arch_args["refine_blocks"] == 1
    out2, info2 = interpolate(CTVolume(ct.array, ct.geometry), factor=2, method="gan", model=str(big.path))
    assert info2["model"] == "tiny_grown" and np.isfinite(out2.array).all()
