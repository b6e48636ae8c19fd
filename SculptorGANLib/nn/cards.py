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
import math
import os
import struct
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
        """The weights file, which must lie in the card's folder (an InputError otherwise)."""
        return confined_weights_path(self.path, self.weights)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data


#: Largest network a card may describe (parameters + buffers); the shipped ones have < 0.2 M.
MAX_PARAMETERS = 50_000_000
#: Largest safetensors header we parse (bytes).
MAX_SAFETENSORS_HEADER = 16 << 20


def confined_weights_path(card_path: Path | None, weights: str) -> Path:
    """The weights file a card names, which must be a plain relative path inside the card's folder."""
    base = (card_path.parent if card_path else MODELS_DIR).resolve()
    where = card_path or MODELS_DIR
    if not weights or not str(weights).strip():
        return base / ""
    candidate = Path(weights)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise InputError(f"{where}: weights path {weights!r} leaves the card's folder; "
                         "weights must sit in the folder of their model card")
    resolved = (base / candidate).resolve()
    if base not in resolved.parents:
        raise InputError(f"{where}: weights path {weights!r} resolves outside the card's folder ({resolved})")
    return resolved


def safetensors_numel(path: Path) -> int:
    """Number of values in a safetensors file, from its JSON header only."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise ValueError("file too short")
            length = struct.unpack("<Q", raw)[0]
            if length > MAX_SAFETENSORS_HEADER:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(handle.read(length))
        return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: cannot be read as safetensors weights ({exc})") from None


def network_numel(architecture: str, arch_args: dict, where) -> int | None:
    """Values in the state dict of the network ``architecture(arch_args)``, built on the meta device; None
    for architectures this library does not build."""
    import torch

    try:
        with torch.device("meta"):
            if architecture in ("wpunet", "monai_unet"):
                from .wpunet import build_model

                net = build_model(architecture, arch_args, fast_layout=False)
            else:
                from .gan import GENERATOR_ARCH, build_generator

                if architecture != GENERATOR_ARCH:
                    return None
                net = build_generator(arch_args)
    except Exception as exc:  # noqa: BLE001 - bad arch_args of any kind
        raise InputError(f"{where}: cannot build {architecture!r} from its arch_args ({exc})") from None
    return sum(v.numel() for v in net.state_dict().values())


def check_network_size(architecture: str, arch_args: dict, weights: Path, where) -> None:
    """Refuse a card whose network is huge or does not match its weights, before anything is allocated."""
    stored = safetensors_numel(weights)
    if stored > MAX_PARAMETERS:
        raise InputError(f"{weights}: holds {stored:,} values, more than the {MAX_PARAMETERS:,} a model may have")
    needed = network_numel(architecture, arch_args, where)
    if needed is None:
        return
    if needed > MAX_PARAMETERS:
        raise InputError(f"{where}: its arch_args describe a network of {needed:,} parameters "
                         f"(limit {MAX_PARAMETERS:,}); refusing to build it")
    if needed != stored:
        raise InputError(f"{where}: its arch_args describe {needed:,} parameters but {weights.name} holds {stored:,}; "
                         "card and weights do not belong together")


def verify_card(card: ModelCard) -> ModelCard:
    """Check ``card`` before anything is loaded or built: weights in its folder, a sha256 that matches them,
    and a network whose size fits the limit and the weights (see :func:`check_network_size`)."""
    path = card.weights_path
    if not path.is_file():
        raise InputError(f"{path}: weights file named by model card {card.path} not found")
    digest = sha256_of(path)
    if not str(card.sha256 or "").strip():
        raise InputError(f"{card.path}: model card has no sha256 for its weights, so they cannot be verified; if you "
                         f"trust {path.name}, add \"sha256\": \"{digest}\" to the card")
    if digest != card.sha256:
        raise InputError(f"{path}: checksum does not match its model card (corrupt or replaced file)")
    check_network_size(card.architecture, card.arch_args, path, card.path or card.name)
    return card


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
        return verify_card(card)
    shipped = [c for c in list_models() if c.task == task]
    return verify_card(shipped[0]) if shipped else None


def load_weights(card: ModelCard, verify: bool = True) -> dict:
    """The card's tensors (safetensors: no code is executed), after :func:`verify_card` (unless ``verify``
    is False: for cards made in this process, e.g. during training)."""
    from safetensors.torch import load_file

    path = card.weights_path
    if not path.is_file():
        raise InputError(f"{path}: weights file named by model card {card.path} not found")
    if verify:
        verify_card(card)
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
