"""Put a command into a conversation: before the prompt, after it, or into a system message.

``before`` and ``after`` extend the last user message (the prompt), separated from it by a blank
line. ``system`` adds a leading system message holding the command, or, when the conversation
already starts with one, appends the command to it (a blank line between), since many chat
templates accept a single system message only. The input is never modified.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..errors import ControlDataError

PLACEMENTS = ("before", "after", "system")
PLACEMENT_MODES = ("sample", *PLACEMENTS)
SEPARATOR = "\n\n"


def insert_command(messages: Sequence[dict], command: str, placement: str) -> list[dict]:
    """A new conversation: ``messages`` with ``command`` placed as ``placement`` says.

    Raises:
        ControlDataError: an unknown placement, an empty command, or a conversation that does not end
            with a user message.
    """
    if placement not in PLACEMENTS:
        raise ControlDataError(f"unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")
    if not isinstance(command, str) or not command.strip():
        raise ControlDataError("the command to insert must be a non-empty string")
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not conversation or conversation[-1]["role"] != "user":
        raise ControlDataError("a command can only be inserted into a conversation that ends with a user message")
    if placement == "before":
        conversation[-1]["content"] = command + SEPARATOR + conversation[-1]["content"]
    elif placement == "after":
        conversation[-1]["content"] = conversation[-1]["content"] + SEPARATOR + command
    elif conversation[0]["role"] == "system":
        conversation[0]["content"] = conversation[0]["content"] + SEPARATOR + command
    else:
        conversation.insert(0, {"role": "system", "content": command})
    return conversation


def choose_placement(mode: str, rng: random.Random) -> str:
    """``mode`` itself when it is a fixed placement, else one drawn uniformly with ``rng``.

    Raises:
        ControlDataError: an unknown mode.
    """
    if mode == "sample":
        return rng.choice(PLACEMENTS)
    if mode in PLACEMENTS:
        return mode
    raise ControlDataError(f"unknown placement {mode!r} (--placement): expected one of {', '.join(PLACEMENT_MODES)}")
