"""The exception family of steerdeco: one base, one subclass per wing, each a ``ValueError``.

Every message names the file and line, the field or the flag at fault and says how to fix it; the
command-line tools print it as one line and exit with status 2. All are ``ValueError`` subclasses,
so callers that catch those keep working.
"""

from __future__ import annotations


class SteerdecoError(ValueError):
    """Bad input or options of any steerdeco tool; the message names what is wrong and the fix."""


class ControlDataError(SteerdecoError):
    """Bad control-data input or options (the builder, the rows' contract and their reader)."""


class AnalysisError(SteerdecoError):
    """Bad options or inputs of an analysis run; the message names the option."""

