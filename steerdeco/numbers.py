"""The numbers a prompt writes, read off its tokens: the value each prompt token is part of.

Heads with ``named_values`` (:class:`~steerdeco.config.HeadsConfig`) take a number's value as it is
written ("temperature 0.35", ".3", "30%", "zero point three five") as a feature of the tokens that write
it, the way xVal (arXiv 2310.02989) gives a transformer the value of a number beside its tokens: the
learned part of the heads then has to find *which* number names a temperature or a top-p, not to
decode digits from hidden states.

Reading needs only the text of the tokens that can be part of a number (digits, the decimal point, the
percent sign, the digit words and "point"); :func:`number_token_table` picks them from a tokenizer once
and the table is saved with the heads' config, so reading needs no tokenizer later. Every other token
reads as a separator.

Formats: decimals (``0.35``, ``1``, ``.3``), percent (``30%`` reads 0.3), digit words with an optional
"point" and digit words after it (``zero point three five``, ``one point five``, ``two``, ``point five``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Per token: written (1 where a number), its value clipped to [0, MAX_READ_VALUE], log of (that + 0.05).
NUMBER_FEATURES = 3
MAX_READ_VALUE = 4.0
_SEPARATOR = "#"  # what a token that cannot be part of a number reads as: not a word character, not a point
_WORD = "(?:" + "|".join(DIGIT_WORDS) + ")"
_NUMBER_PIECE = re.compile(rf"^\s*(?:\d+|%|{_WORD}|point)$|^[^\w.]*\.$", re.IGNORECASE)  # "=." of "T=.5" too
_DECIMAL = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)(\s?%)?")
_WORDS = re.compile(rf"(?<!\w)(?:({_WORD}(?:\s+{_WORD})*)(?:\s+point((?:\s+{_WORD})+))?|point((?:\s+{_WORD})+))(?!\w)",
                    re.IGNORECASE)


def written_numbers(text: str) -> list[tuple[int, int, float]]:
    """``[(start, end, value)]`` of every number ``text`` writes, in the formats of the module docstring."""
    found = []
    for match in _DECIMAL.finditer(text):
        value = float(match.group(1))
        found.append((match.start(), match.end(), value / 100 if match.group(2) else value))
    for match in _WORDS.finditer(text):
        whole, fraction = match.group(1), match.group(2) or match.group(3)
        digits = "".join(str(DIGIT_WORDS.index(w.lower())) for w in whole.split()) if whole else "0"
        decimals = "".join(str(DIGIT_WORDS.index(w.lower())) for w in fraction.split()) if fraction else ""
        found.append((match.start(), match.end(), float(f"{digits}.{decimals}" if decimals else digits)))
    return sorted(found)


def number_token_table(tokenizer) -> dict[str, str]:
    """``{token id (a string, as JSON keys are): text}`` of the tokenizer's tokens that can be part of a number."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return {str(i): piece for i, piece in enumerate(pieces) if _NUMBER_PIECE.match(piece)}


class NumberReader:
    """The value each token of a prompt is part of, from a :func:`number_token_table`.

    ``reader(input_ids [B, P], mask [B, P] or None) -> [B, P, NUMBER_FEATURES]`` float32 features:
    ``(1, v, log(v + 0.05))`` on the tokens of a written number of value ``v`` (clipped to
    ``[0, MAX_READ_VALUE]``), zeros elsewhere and on masked positions.
    """

    def __init__(self, table: Mapping[str, str], memory: int = 65536):
        if not table:
            raise ValueError("the number token table is empty: the tokenizer has no digit tokens to read numbers from")
        self.pieces = {int(k): str(v) for k, v in table.items()}
        self._read: dict[tuple[int, ...], torch.Tensor] = {}  # the features of prompts read before (training repeats them)
        self._memory = memory

    def token_values(self, ids: Sequence[int]) -> list[float | None]:
        """The value of the written number each of ``ids`` is part of (None: none)."""
        pieces = [self.pieces.get(int(i), _SEPARATOR) for i in ids]
        starts = [0] * len(pieces)
        for j in range(1, len(pieces)):
            starts[j] = starts[j - 1] + len(pieces[j - 1])
        values: list[float | None] = [None] * len(pieces)
        for start, end, value in written_numbers("".join(pieces)):
            for j, piece in enumerate(pieces):
                if starts[j] < end and starts[j] + len(piece) > start and piece.strip():
                    values[j] = value
        return values

    def row_features(self, ids: Sequence[int]) -> torch.Tensor:
        """``[len(ids), NUMBER_FEATURES]`` features of one sequence of token ids."""
        key = tuple(int(i) for i in ids)
        features = self._read.get(key)
        if features is None:
            features = torch.zeros(len(key), NUMBER_FEATURES)
            for j, value in enumerate(self.token_values(key)):
                if value is not None:
                    clipped = min(max(value, 0.0), MAX_READ_VALUE)
                    features[j] = torch.tensor([1.0, clipped, math.log(clipped + 0.05)])
            if len(self._read) >= self._memory:
                self._read.clear()
            self._read[key] = features
        return features

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = torch.ones(input_ids.shape, dtype=torch.bool) if mask is None else mask.bool().cpu()
        features = torch.zeros(*input_ids.shape, NUMBER_FEATURES)
        for b, (row, real) in enumerate(zip(input_ids.tolist(), keep, strict=True)):
            positions = real.nonzero().flatten()  # read the real tokens only: padding is no separator
            if len(positions):
                features[b, positions] = self.row_features([row[j] for j in positions.tolist()])
        return features.to(input_ids.device)
