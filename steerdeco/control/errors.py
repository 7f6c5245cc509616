"""The one exception type of the control-data builder."""

from __future__ import annotations


class ControlDataError(ValueError):
    """Bad control-data input or options.

    The message names the file and line, the command or prompt id, or the command-line option at
    fault, and says how to fix it. A ``ValueError``, so callers that catch those keep working.
    """
