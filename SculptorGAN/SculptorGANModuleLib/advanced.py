"""The panel's Advanced section, built from the library's one options schema.

Every :data:`SculptorGANLib.core.options.OPTIONS` entry the main panel does not show (:data:`BASIC`)
gets a widget here, made from its spec (kind, default, bounds, choices, help), so a new pipeline
option appears in Slicer without touching the module. The values live in the parameter node as one
JSON string (``advancedOptions``, only what differs from the defaults), saved with the scene.
The spec → widget description and the JSON round trip need no Qt; :func:`buildWidgets` does the Qt part.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List

#: GUI device choice → library device name (no MPS: see SculptorGANLib.slicer_worker.worker_device).
DEVICES = {"auto": "auto", "GPU": "cuda", "CPU": "cpu"}
#: Options the main panel shows with its own widgets (steps are the step check boxes, roi the ROI selector).
BASIC = ("steps", "factor", "target_spacing", "missing_slices", "fill_missing", "roi", "device",
         "segmentation_model", "smoothing")
#: Widget class used for each option kind.
WIDGETS = {"bool": "QCheckBox", "int": "QSpinBox", "float": "QDoubleSpinBox", "choice": "QComboBox",
           "str": "QLineEdit", "ints": "QLineEdit"}
DEFAULT_TEXT = "(default)"


def advancedSpecs() -> List:
    """The schema's options that only the Advanced section shows, in schema order."""
    from SculptorGANLib.core.options import OPTIONS

    return [spec for spec in OPTIONS if spec.name not in BASIC]


def widgetClass(spec) -> str:
    if spec.kind not in WIDGETS:
        raise ValueError(f"option {spec.name}: no Advanced widget for kind {spec.kind!r}")
    return WIDGETS[spec.kind]


def decode(text: str) -> Dict[str, Any]:
    """The advancedOptions parameter (JSON object) as a dict; unknown names are dropped."""
    if not text or not text.strip():
        return {}
    try:
        values = json.loads(text)
    except ValueError:
        return {}
    names = {spec.name for spec in advancedSpecs()}
    return {k: v for k, v in values.items() if k in names} if isinstance(values, dict) else {}


def encode(values: Dict[str, Any]) -> str:
    """JSON of the values that differ from their schema default ('' when all are defaults)."""
    defaults = {spec.name: spec.default for spec in advancedSpecs()}
    changed = {k: v for k, v in sorted(values.items()) if k in defaults and v != defaults[k]}
    return json.dumps(changed) if changed else ""


def _ints(text: str):
    return tuple(int(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v.strip())


def readWidget(spec, widget) -> Any:
    """The option value a widget shows (None for '(default)' / empty)."""
    kind = spec.kind
    if kind == "bool":
        return bool(widget.checked)
    if kind == "choice":
        text = widget.currentText
        return None if text == DEFAULT_TEXT else text
    if kind in ("int", "float"):
        value = widget.value
        if spec.default is None and value == widget.minimum:
            return None
        return int(value) if kind == "int" else float(value)
    text = widget.text.strip()
    if kind == "ints":
        return _ints(text)
    return text or None


def writeWidget(spec, widget, value) -> None:
    """Show ``value`` (None: the default) in the widget."""
    kind = spec.kind
    value = spec.default if value is None and spec.default is not None else value
    if kind == "bool":
        widget.checked = bool(value)
    elif kind == "choice":
        widget.currentText = DEFAULT_TEXT if value is None else str(value)
    elif kind in ("int", "float"):
        widget.value = widget.minimum if value is None else value
    elif kind == "ints":
        widget.text = ",".join(str(v) for v in (value or ()))
    else:
        widget.text = "" if value is None else str(value)


def buildWidgets(qt, formLayout, onChanged: Callable[[], None]) -> Dict[str, Any]:
    """One labelled widget per advanced option, added to ``formLayout``; returns {option name: widget}."""
    widgets = {}
    for spec in advancedSpecs():
        cls = widgetClass(spec)
        widget = getattr(qt, cls)()
        widget.objectName = f"advanced_{spec.name}"
        widget.toolTip = spec.help
        if spec.kind == "choice":
            if spec.default is None:
                widget.addItem(DEFAULT_TEXT)
            for choice in spec.choices:
                widget.addItem(str(choice))
            widget.connect("currentIndexChanged(int)", lambda *_: onChanged())
        elif spec.kind in ("int", "float"):
            low = spec.minimum if spec.minimum is not None else 0
            high = spec.maximum if spec.maximum is not None else 1e6
            if spec.kind == "float":
                widget.decimals = 2
                widget.singleStep = 0.05 if high <= 1 else 0.5
            else:
                widget.singleStep = 1
            if spec.default is None:  # one step below the range means "default"
                low -= widget.singleStep
                widget.specialValueText = DEFAULT_TEXT
            widget.minimum, widget.maximum = low, high
            widget.connect("valueChanged(double)" if spec.kind == "float" else "valueChanged(int)",
                           lambda *_: onChanged())
        elif spec.kind == "bool":
            widget.connect("toggled(bool)", lambda *_: onChanged())
        else:
            widget.placeholderText = DEFAULT_TEXT
            widget.connect("editingFinished()", onChanged)
        writeWidget(spec, widget, spec.default)
        formLayout.addRow(spec.title + ":", widget)
        widgets[spec.name] = widget
    return widgets
