"""The pipeline's options, declared once.

:data:`OPTIONS` is the one schema: each :class:`OptionSpec` names a :class:`PipelineOptions` field, its
default, bounds, help text and the command-line flag. The CLI and ``batch`` build their arguments from it
(:func:`add_arguments`, :func:`options_from_args`), the Slicer worker receives the options as one JSON
document (:meth:`PipelineOptions.to_json` / :meth:`PipelineOptions.from_json`), and the Slicer panel
builds its Advanced section from :func:`specs`. Validation lives in :meth:`PipelineOptions.validate`.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from .errors import SculptorGANError

STEPS = ("interpolate", "segment", "surfaces")
INTERPOLATION_METHODS = ("gan", "linear", "cubic")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class OptionSpec:
    """One pipeline option: its field name, kind, default, flag, help and the group it belongs to.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, ``choice``, ``steps`` or ``ints`` (slice indices).
    ``group`` is the stage it configures (``grid``, ``interpolate``, ``segment``, ``surfaces``, ``device``,
    ``roi``, ``steps``); commands pick the groups they need. A boolean whose default is True gets a ``--no-`` flag.
    """

    name: str
    kind: str
    default: Any
    help: str
    group: str
    flag: str = ""
    label: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    metavar: str | None = None
    exclusive_with: str = ""
    off_help: str = ""  # help of the --no- flag of a boolean that defaults to True

    @property
    def cli_flag(self) -> str:
        if self.flag:
            return self.flag
        base = self.name.replace("_", "-")
        return f"--no-{base}" if self.kind == "bool" and self.default is True else f"--{base}"

    @property
    def title(self) -> str:
        """The label a GUI shows."""
        return self.label or self.name.replace("_", " ").capitalize()


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("steps", "steps", STEPS, "comma-separated steps to run: interpolate,segment,surfaces (default: all)",
               "steps"),
    OptionSpec("factor", "int", None, "through-plane upsampling factor K, 1-16: slices K times thinner (e.g. 2 turns 5 mm "
               "into 2.5 mm; default: none, the slice spacing is kept)", "grid", minimum=1, maximum=16, metavar="K", exclusive_with="target_spacing"),
    OptionSpec("target_spacing", "float", None, "through-plane output spacing in mm, 0.1-50, instead of --factor "
               "(default: none, the slice spacing is kept)", "grid",
               minimum=0.1, maximum=50.0, metavar="MM", exclusive_with="factor"),
    OptionSpec("missing_slices", "ints", (), "0-based indices of missing slices to synthesize, e.g. 12,13 "
               "(inner slices only; default: none, only gaps found in a DICOM series)", "grid", flag="--missing", metavar="I,J,..."),
    OptionSpec("roi", "str", None, "restrict interpolation and segmentation to a box: a Slicer ROI (.mrk.json), a "
               "JSON box {center, size, orientation} or xmin,xmax,ymin,ymax,zmin,zmax in LPS mm (default: the whole "
               "CT)", "roi", metavar="BOX"),
    OptionSpec("fill_missing", "bool", True, "synthesize missing slices (gaps in a DICOM series, --missing)", "grid",
               off_help="keep missing slices as the placeholder between their neighbours instead of synthesizing "
               "them (default: they are synthesized)"),
    OptionSpec("interpolation_method", "choice", None, "force an interpolation method (default: decided per scan — "
               "the shipped network where it beats cubic on the scan's own held-back slices, else cubic, with a "
               "note)", "interpolate", flag="--method", choices=INTERPOLATION_METHODS),
    OptionSpec("interpolation_model", "str", None, "interpolation model card (.json) or shipped model name "
               "(default: the shipped SculptorGAN model)", "interpolate", flag="--interp-model", metavar="CARD"),
    OptionSpec("adapt", "bool", False, "adapt the network to this scan first: fine-tune it on the scan's own in-plane "
               "data degraded to its slice spacing (self-supervised, about a minute on a CPU); the self-check then "
               "keeps the best of adapted network, unadapted network and cubic (default: off)", "interpolate",
               label="Adapt to this scan"),
    OptionSpec("enhance", "bool", False, "also refine the acquired slices with the GAN (experimental; default: off)",
               "interpolate"),
    OptionSpec("segmentation_model", "str", None, "segmentation model card (.json) or shipped model name "
               "(default: the shipped WP-UNet)", "segment", flag="--model", metavar="CARD"),
    OptionSpec("postprocess", "bool", True, "anatomical clean-up of the network output (largest kidney per side, "
               "tumor attached to a kidney, holes filled)", "segment",
               off_help="keep the raw network output (no anatomical clean-up; default: clean-up on)"),
    OptionSpec("morph_mm", "float", 0.0, "radius in mm, 0-20, of an extra morphological opening/closing of the "
               "masks (default: 0, none)", "segment", minimum=0.0, maximum=20.0, metavar="R"),
    OptionSpec("overlap", "float", 0.25, "sliding-window overlap 0-0.9 of the segmentation (higher: smoother, "
               "slower; default 0.25)", "segment", minimum=0.0, maximum=0.9, metavar="F"),
    OptionSpec("device", "choice", "auto", "where networks run: auto (a CUDA GPU when usable, else the CPU), cpu, "
               "cuda or mps", "device", choices=DEVICES),
    OptionSpec("smoothing", "float", 0.5, "surface smoothing 0 (none) to 1 (strong), as in Slicer (default 0.5)",
               "surfaces", minimum=0.0, maximum=1.0, metavar="S"),
)
_BY_NAME = {spec.name: spec for spec in OPTIONS}


def specs(*groups: str) -> tuple[OptionSpec, ...]:
    """The option specs of ``groups`` (all when none are given), in declaration order."""
    return tuple(s for s in OPTIONS if not groups or s.group in groups)


def _default(name: str):
    return field(default=_BY_NAME[name].default)


@dataclass
class PipelineOptions:
    """What to run and how; defaults are what a user gets without options (see :data:`OPTIONS`)."""

    steps: tuple[str, ...] = _default("steps")
    factor: int | None = _default("factor")
    target_spacing: float | None = _default("target_spacing")
    missing_slices: tuple[int, ...] = _default("missing_slices")
    roi: Any = _default("roi")  # a core.roi.parse_roi form (str, dict or Roi); None: the whole CT
    fill_missing: bool = _default("fill_missing")
    interpolation_method: str | None = _default("interpolation_method")
    interpolation_model: str | None = _default("interpolation_model")
    adapt: bool = _default("adapt")
    enhance: bool = _default("enhance")
    segmentation_model: str | None = _default("segmentation_model")
    postprocess: bool = _default("postprocess")
    morph_mm: float = _default("morph_mm")
    overlap: float = _default("overlap")
    device: str = _default("device")
    smoothing: float = _default("smoothing")

    def __post_init__(self) -> None:
        self.steps = tuple(self.steps)
        self.missing_slices = tuple(int(i) for i in self.missing_slices)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SculptorGANError` naming the first bad option (by its command-line flag): not a
        finite number, outside the schema's ``minimum``/``maximum``, or not one of its choices."""
        for spec in OPTIONS:
            value = getattr(self, spec.name)
            if spec.kind == "float" and value is not None and not math.isfinite(value):
                raise SculptorGANError(f"{spec.cli_flag} must be a finite number, got {value}")
            if spec.kind in ("int", "float") and value is not None:
                low, high = spec.minimum, spec.maximum
                if (low is not None and value < low) or (high is not None and value > high):
                    bounds = (f"between {low:g} and {high:g}" if low is not None and high is not None
                              else f">= {low:g}" if low is not None else f"<= {high:g}")
                    raise SculptorGANError(f"{spec.cli_flag} must be {bounds}, got {value:g}")
            if spec.kind == "choice" and value is not None and value not in spec.choices:
                raise SculptorGANError(f"{spec.cli_flag} must be one of {', '.join(spec.choices)}, got {value!r}")
        if self.roi is not None:
            from .roi import parse_roi

            parse_roi(self.roi)  # a bad box or ROI file fails here, before any reading
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise SculptorGANError(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
        if self.factor is not None and self.target_spacing is not None:
            raise SculptorGANError("give either --factor or --target-spacing, not both")

    def to_json(self) -> dict:
        """A JSON-serializable dict (lists for tuples): what crosses the process boundary to the worker."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PipelineOptions":
        """Options from :meth:`to_json`'s dict; unknown keys are an error, missing keys take their defaults."""
        unknown = sorted(set(data) - set(_BY_NAME))
        if unknown:
            raise SculptorGANError(f"unknown option(s) {', '.join(unknown)}")
        return cls(**dict(data))


# ----------------------------------------------------------------------------- command line
def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated slice indices, got {text!r}") from None


def _steps(text: str) -> tuple[str, ...]:
    steps = tuple(s.strip() for s in text.replace(" ", ",").split(",") if s.strip())
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown step(s) {bad}; choose from {', '.join(STEPS)}")
    return steps


_ARG_TYPES = {"int": int, "float": float, "str": str, "ints": _ints, "steps": _steps}


def _help(spec: OptionSpec) -> str:
    if spec.kind == "bool" and spec.default is True:
        return spec.off_help or f"do not: {spec.help}"
    if spec.kind == "bool" or spec.default in (None, ()) or "default" in spec.help:
        return spec.help
    default = ",".join(spec.default) if spec.kind == "steps" else spec.default
    return f"{spec.help} (default: {default})"


def add_arguments(parser: argparse.ArgumentParser, groups: Sequence[str], exclude: Sequence[str] = ()) -> None:
    """Add the options of ``groups`` (less ``exclude``) to ``parser``, each as :data:`OPTIONS` declares it."""
    chosen = [s for s in specs(*groups) if s.name not in exclude]
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for spec in chosen:
        target: Any = parser
        if spec.exclusive_with and spec.exclusive_with in {s.name for s in chosen}:
            key = "|".join(sorted((spec.name, spec.exclusive_with)))
            if key not in exclusive:
                exclusive[key] = parser.add_mutually_exclusive_group()
            target = exclusive[key]
        kwargs: dict[str, Any] = {"dest": spec.name, "help": _help(spec)}
        if spec.kind == "bool":
            kwargs["action"] = "store_false" if spec.default is True else "store_true"
        else:
            kwargs["default"] = spec.default
            if spec.kind == "choice":
                kwargs["choices"] = spec.choices
            else:
                kwargs["type"] = _ARG_TYPES[spec.kind]
            if spec.metavar:
                kwargs["metavar"] = spec.metavar
        target.add_argument(spec.cli_flag, **kwargs)


def options_from_args(args: argparse.Namespace, **overrides: Any) -> PipelineOptions:
    """:class:`PipelineOptions` from parsed arguments (options a command does not offer keep their defaults)."""
    values = {s.name: getattr(args, s.name) for s in OPTIONS if hasattr(args, s.name)}
    values.update(overrides)
    return PipelineOptions(**values)
