"""Model cards and weights: safetensors round trip, checksum verification, clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from SculptorGANLib.core.errors import InputError
from SculptorGANLib.nn.cards import ModelCard, find_model, list_models, load_card, load_weights, save_model, sha256_of


def _card(name="tiny", task="segmentation"):
    return ModelCard(name=name, task=task, architecture="Linear", arch_args={"n": 3},
                     training={"data": "none", "command": "test"}, license="Apache-2.0", version="1")


def test_save_and_load_round_trip(tmp_path):
    layer = torch.nn.Linear(3, 2)
    card_path = save_model(layer.state_dict(), _card(), tmp_path, half=False)
    card = load_card(card_path)
    assert card.sha256 and card.weights == "tiny.safetensors"
    weights = load_weights(card)
    assert torch.equal(weights["weight"], layer.weight.detach())
    assert find_model("segmentation", str(card_path)).name == "tiny"


def test_half_precision_export(tmp_path):
    card = load_card(save_model(torch.nn.Linear(3, 2).state_dict(), _card(), tmp_path, half=True))
    assert load_weights(card)["weight"].dtype == torch.float16


def test_tampered_weights_are_rejected(tmp_path):
    card_path = save_model(torch.nn.Linear(3, 2).state_dict(), _card(), tmp_path)
    weights = tmp_path / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        load_weights(load_card(card_path))


def test_pickle_file_is_not_loaded(tmp_path):
    card = _card()
    card.weights = "evil.safetensors"
    torch.save({"weight": torch.ones(1)}, tmp_path / "evil.safetensors")  # a pickle in disguise
    card.sha256 = sha256_of(tmp_path / "evil.safetensors")  # even with a matching checksum it is never unpickled
    (tmp_path / "tiny.json").write_text(json.dumps(card.to_json()))
    with pytest.raises(InputError, match="cannot be read as safetensors"):
        load_weights(load_card(tmp_path / "tiny.json"))


def test_wrong_task_and_bad_cards(tmp_path):
    card_path = save_model(torch.nn.Linear(3, 2).state_dict(), _card(task="interpolation"), tmp_path)
    with pytest.raises(InputError, match="interpolation model"):
        find_model("segmentation", str(card_path))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="not a valid model card"):
        load_card(tmp_path / "broken.json")
    with pytest.raises(InputError, match="no such model"):
        find_model("segmentation", "no-such-model-name")


def test_shipped_cards_are_complete():
    for card in list_models():
        assert card.weights_path.is_file(), card.name
        assert card.training.get("data") and card.training.get("command"), card.name
        assert card.license and card.metrics, card.name
        load_weights(card)  # checksum matches
