"""Model cards cannot smuggle in unchecked weights, files outside their folder or huge networks (item 9)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from SculptorGANLib.core.errors import InputError
from SculptorGANLib.nn.cards import MODELS_DIR, find_model, load_weights, sha256_of


@pytest.fixture
def card_dir(tmp_path):
    """A copy of the shipped segmentation card and weights in a user folder."""
    src = json.loads((MODELS_DIR / "wpunet_kidney.json").read_text())
    shutil.copy(MODELS_DIR / src["weights"], tmp_path / src["weights"])
    return tmp_path, src


def _write(folder: Path, name: str, card: dict) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card))
    return path


@pytest.mark.parametrize("sha", ["", None])
def test_card_without_checksum_is_refused_and_the_digest_is_shown(card_dir, sha):
    folder, card = card_dir
    card = dict(card, sha256=sha) if sha is not None else {k: v for k, v in card.items() if k != "sha256"}
    path = _write(folder, "nosha", card)
    digest = sha256_of(folder / card["weights"])
    with pytest.raises(InputError, match="sha256") as info:
        find_model("segmentation", str(path))
    assert digest in str(info.value)


def test_tampered_weights_are_refused(card_dir):
    folder, card = card_dir
    weights = folder / card["weights"]
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        load_weights(find_model("segmentation", str(_write(folder, "tampered", card))))


@pytest.mark.parametrize("weights", ["../../../../../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors"])
def test_weights_outside_the_card_folder_are_refused(card_dir, weights):
    folder, card = card_dir
    path = _write(folder, "escape", dict(card, weights=weights))
    with pytest.raises(InputError, match="card's folder"):
        find_model("segmentation", str(path))


def test_weights_symlinked_out_of_the_folder_are_refused(card_dir, tmp_path_factory):
    folder, card = card_dir
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "w.safetensors"
    shutil.copy(folder / card["weights"], elsewhere)
    (folder / "link.safetensors").symlink_to(elsewhere)
    with pytest.raises(InputError, match="card's folder"):
        find_model("segmentation", str(_write(folder, "link", dict(card, weights="link.safetensors"))))


def test_huge_architecture_is_refused_before_anything_is_allocated(card_dir):
    import resource

    folder, card = card_dir
    path = _write(folder, "huge", dict(card, arch_args=dict(card["arch_args"], features=[16384] * 4)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="parameters"):
        find_model("segmentation", str(path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # < 200 MB more (kB units)


def test_architecture_that_does_not_match_its_weights_is_refused(card_dir):
    folder, card = card_dir
    path = _write(folder, "other", dict(card, arch_args=dict(card["arch_args"], features=[8, 16, 32, 128])))
    with pytest.raises(InputError, match="do not belong together"):
        find_model("segmentation", str(path))


def test_shipped_models_pass_every_check():
    for task in ("segmentation", "interpolation"):
        card = find_model(task)
        assert card is not None and load_weights(card)
