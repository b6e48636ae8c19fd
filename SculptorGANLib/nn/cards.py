"""Model registry: JSON model cards + checksummed safetensors weights (never pickle).

A model card is a JSON file ``<name>.json`` next to its weights ``<name>.safetensors``:

    {"name": ..., "task": "interpolation" | "segmentation", "architecture": ..., "arch_args": {...},
     "weights": "<name>.safetensors", "sha256": ..., "preprocessing": {...}, "classes": {...},
     "training": {"data": ..., "command": ..., ...}, "metrics": {...}, "license": ..., "version": ...}

Shipped models live in ``Resources/Models``; users point to their own card with ``--model PATH``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import InputError

MODELS_DIR = Path(os.environ.get("SCULPTORGAN_MODELS_DIR", Path(__file__).resolve().parents[2] / "Resources" / "Models"))
TASKS = ("interpolation", "segmentation")


@dataclass
class ModelCard:
    """Everything needed to rebuild and trust a network."""

    name: str
    task: str
    architecture: str
    arch_args: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    sha256: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    license: str = "Apache-2.0"
    version: str = "0"
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def weights_path(self) -> Path:
        base = self.path.parent if self.path else MODELS_DIR
        return base / self.weights

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(path: str | os.PathLike) -> ModelCard:
    """Read a model card (a ``.json`` file, or the ``.safetensors`` next to one)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise InputError(f"{path}: model card not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in ModelCard.__dataclass_fields__ and k != "path"}
        card = ModelCard(**known, path=path)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{path}: not a valid model card ({exc})") from None
    if card.task not in TASKS:
        raise InputError(f"{path}: unknown task {card.task!r} (expected one of {TASKS})")
    return card


def list_models(directory: Path | None = None) -> list[ModelCard]:
    """All model cards in ``directory`` (default: the shipped models)."""
    directory = directory or MODELS_DIR
    if not directory.is_dir():
        return []
    return [load_card(p) for p in sorted(directory.glob("*.json"))]


def find_model(task: str, name_or_path: str | None = None) -> ModelCard | None:
    """The card for ``task``: a path, a shipped model name, or the first shipped model of that task."""
    if name_or_path:
        candidate = Path(name_or_path)
        if candidate.exists():
            card = load_card(candidate)
        else:
            matches = [c for c in list_models() if c.name == name_or_path]
            if not matches:
                raise InputError(f"{name_or_path}: no such model file or shipped model name")
            card = matches[0]
        if card.task != task:
            raise InputError(f"{card.path}: is a {card.task} model, but a {task} model is needed")
        return card
    shipped = [c for c in list_models() if c.task == task]
    return shipped[0] if shipped else None


def load_weights(card: ModelCard, verify: bool = True) -> dict:
    """The card's tensors (safetensors: no code is executed), after checking the sha256."""
    from safetensors.torch import load_file

    path = card.weights_path
    if not path.is_file():
        raise InputError(f"{path}: weights file named by model card {card.path} not found")
    if verify and card.sha256 and sha256_of(path) != card.sha256:
        raise InputError(f"{path}: checksum does not match its model card (corrupt or replaced file)")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path}: cannot be read as safetensors weights ({exc})") from None


def load_into(net, card: ModelCard):
    """``net`` holding the card's weights (checksum checked, float16 stored weights made float32), in eval mode;
    an :class:`InputError` naming the card when they do not fit the architecture."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_weights(card).items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{card.path}: weights do not fit the architecture in the card "
                         f"({str(exc).splitlines()[0][:200]})") from None
    return net.eval()


def save_model(state_dict: dict, card: ModelCard, out_dir: str | os.PathLike, half: bool = True) -> Path:
    """Write ``<card.name>.safetensors`` (float16 if ``half``) and its card with the sha256; return the card path."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        tensors[key] = value
    weights = out_dir / f"{card.name}.safetensors"
    save_file(tensors, str(weights), metadata={"name": card.name, "task": card.task})
    card.weights = weights.name
    card.sha256 = sha256_of(weights)
    card_path = out_dir / f"{card.name}.json"
    card_path.write_text(json.dumps(card.to_json(), indent=2) + "\n", encoding="utf-8")
    card.path = card_path
    return card_path
