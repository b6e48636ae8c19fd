"""Error types shown to users as one-line messages."""
from __future__ import annotations


class SculptorGANError(Exception):
    """Base class for errors reported to the user without a traceback."""


class InputError(SculptorGANError):
    """A user-supplied file or folder cannot be used; the message names it and says why."""


class OutputError(SculptorGANError):
    """The output location cannot be written."""


class CancelledError(SculptorGANError):
    """The user cancelled a running pipeline."""
