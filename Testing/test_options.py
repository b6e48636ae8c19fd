"""The one options schema: CLI flags, worker JSON and validation all come from core.options.OPTIONS."""
from __future__ import annotations

import argparse
import math

import pytest

from SculptorGANLib.core.errors import SculptorGANError
from SculptorGANLib.core.options import OPTIONS, PipelineOptions, add_arguments, options_from_args, specs


def _parser(*groups: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser, groups)
    return parser


def test_every_option_is_a_field_with_the_declared_default():
    defaults = PipelineOptions()
    assert [s.name for s in OPTIONS] == list(defaults.to_json())
    for spec in OPTIONS:
        value = getattr(defaults, spec.name)
        assert value == spec.default, spec.name
        assert spec.help and spec.group


def test_cli_defaults_equal_the_library_defaults():
    args = _parser(*{s.group for s in OPTIONS}).parse_args([])
    assert options_from_args(args) == PipelineOptions()


def test_cli_flags_reach_the_options():
    args = _parser(*{s.group for s in OPTIONS}).parse_args(
        ["--factor", "3", "--missing", "4,5", "--no-fill-missing", "--method", "cubic", "--enhance",
         "--model", "m.json", "--no-postprocess", "--morph-mm", "1.5", "--overlap", "0.5", "--device", "cpu",
         "--smoothing", "0.2", "--steps", "segment,surfaces"])
    options = options_from_args(args)
    assert options == PipelineOptions(steps=("segment", "surfaces"), factor=3, missing_slices=(4, 5),
                                      fill_missing=False, interpolation_method="cubic", enhance=True,
                                      segmentation_model="m.json", postprocess=False, morph_mm=1.5, overlap=0.5,
                                      device="cpu", smoothing=0.2)


def test_factor_and_target_spacing_are_exclusive_on_the_command_line():
    with pytest.raises(SystemExit):
        _parser("grid").parse_args(["--factor", "2", "--target-spacing", "1"])


def test_json_round_trip_crosses_the_process_boundary():
    import json

    options = PipelineOptions(steps=("interpolate",), target_spacing=1.25, missing_slices=(3,), overlap=0.5)
    again = PipelineOptions.from_json(json.loads(json.dumps(options.to_json())))
    assert again == options
    with pytest.raises(SculptorGANError, match="unknown option"):
        PipelineOptions.from_json({"facter": 2})


@pytest.mark.parametrize("kwargs", [dict(overlap=math.nan), dict(morph_mm=math.inf), dict(target_spacing=math.nan),
                                    dict(device="tpu"), dict(interpolation_method="sinc")])
def test_non_finite_and_unknown_values_are_refused(kwargs):
    with pytest.raises(SculptorGANError):
        PipelineOptions(**kwargs)


def test_groups_select_what_a_command_offers():
    assert {s.name for s in specs("segment")} == {"segmentation_model", "postprocess", "morph_mm", "overlap"}
    help_text = _parser("segment", "device").format_help()
    assert "--overlap" in help_text and "--factor" not in help_text and "(default: auto)" in help_text
