"""Which words of a prompt a negation governs, read off its tokens: "Don't play it *safe*", "nothing *predictable*".

Heads with ``negation_scope`` (:class:`~steerdeco.config.HeadsConfig`) read a command's level from the
words inside a negation's scope *turned around*: a word that reads as "less randomness" reads as "more"
when a negation governs it, so "Avoid the obvious choices." borrows what the heads learned from "the
obvious choices" instead of needing negated commands of its own. The heads learn words, not syntax;
this is the syntax they get for free.

A token is a *negator* ("no", "not", "n't", "nothing", "without", "avoid", "less", "stop", and verbs
that take away what follows them: "eliminate", "remove", "ditch", "disable" ...; avoidance idioms: "steer clear
of", "free of" ...; contrasts: "rather than", "instead of"; the prefix "non": :data:`NEGATORS`), a
*clause break* (punctuation, a line break, a special token, or a word that starts a new clause: "but",
"and" ...: :data:`CLAUSE_WORDS`) or a plain word. A plain word is *negated* when an
odd number of negators stand before it in its clause ("I don't want less randomness": two, so
*randomness* is not). The heads turn a negated word's level around (low k <-> high k). Reading needs
only the text of these tokens: :func:`negation_token_table` picks them from a tokenizer once and the
table is saved with the heads' config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

#: Words (lower case) that negate the rest of their clause; one of several words or tokens is read as one negator.
NEGATORS = frozenset({
    "no", "not", "n't", "'t", "never", "nothing", "none", "nobody", "nowhere", "neither", "nor", "without",
    "cannot", "avoid", "avoiding", "less", "fewer", "stop", "skip",
    # verbs that take away what follows them ("eliminate the randomness", "ditch the clichés")
    "eliminate", "eliminating", "remove", "removing", "abandon", "ditch", "ban", "forbid", "disable", "ignore",
    "ignoring", "reject", "refuse", "lose", "kill", "strip", "suppress", "prevent", "escape",
    # contrasts: what follows is what is not wanted ("the usual phrasing rather than anything quirky")
    "rather than", "instead of", "as opposed to",
    # avoidance idioms ("steer clear of the expected", "free of unusual words")
    "steer clear of", "away from", "refrain from", "get rid of", "do away with", "free of", "free from", "omit",
    "exclude", "excluding",
    # a prefix, read as a negator of the rest of its clause as the others are ("non-random", "nonstandard")
    "non",
})
#: Words (lower case, whole tokens) that end a clause, besides punctuation and line breaks.
CLAUSE_WORDS = frozenset({"but", "and", "so", "instead", "however", "yet", "though", "although", "rather", "while"})
_PUNCTUATION = re.compile(r"[.,;:!?()\[\]{}\"\n—–]")
NEGATOR, BREAK = "negator", "break"
ROLES = (NEGATOR, BREAK)


def token_role(piece: str) -> str | None:
    """:data:`NEGATOR`, :data:`BREAK` or None (a plain word) for one token's text."""
    word = piece.strip().lower().replace("\u2019", "'")
    if word in NEGATORS:
        return NEGATOR
    if word in CLAUSE_WORDS or _PUNCTUATION.search(piece):
        return BREAK
    return None


def negation_token_table(tokenizer) -> dict[str, str]:
    """``{token id (a string, as JSON keys are): role}`` of the tokenizer's negator and clause-break tokens
    (special tokens break a clause), and ``{"id id ...": "negator"}`` for each negator the tokenizer writes in
    several tokens (at the start of a sentence, "Eliminate" may be "E" "lim" "inate")."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    table = {str(i): role for i, piece in enumerate(pieces) if (role := token_role(piece))}
    for word in sorted(NEGATORS):
        for form in (word, word.capitalize(), " " + word, " " + word.capitalize()):
            ids = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(ids) > 1 and tokenizer.decode(ids) == form:
                table[" ".join(map(str, ids))] = NEGATOR
    for i in getattr(tokenizer, "all_special_ids", []):
        table[str(i)] = BREAK
    return table


class NegationReader:
    """Each prompt token's part in a negation, from a :func:`negation_token_table`.

    ``reader(input_ids [B, P], mask [B, P] or None) -> (negators [B, P], negated [B, P])`` bool: the negator
    tokens, and the plain tokens inside an odd number of negations of their clause; False on masked positions.
    """

    def __init__(self, table: Mapping[str, str], memory: int = 65536):
        roles = {str(v) for v in table.values()}
        if not table or roles - set(ROLES):
            raise ValueError(f"a negation token table maps token ids to one of {', '.join(map(repr, ROLES))}, "
                             f"got roles {sorted(roles)}")
        if any(" " in k and v != NEGATOR for k, v in table.items()):
            raise ValueError("a negation token table's key of several token ids names a negator word; "
                             f"got {sorted(k for k, v in table.items() if ' ' in k and v != NEGATOR)[:3]}")
        self.roles = {int(k): str(v) for k, v in table.items() if " " not in k}
        self.words: dict[int, list[tuple[int, ...]]] = {}  # first token -> the negators of several tokens, longest first
        for key in sorted((k for k in table if " " in k), key=lambda k: -len(k.split())):
            ids = tuple(int(i) for i in key.split())
            self.words.setdefault(ids[0], []).append(ids)
        self._read: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._memory = memory

    def token_parts(self, ids: Sequence[int]) -> tuple[list[bool], list[bool]]:
        """``(negator, negated)`` flags of one prompt's tokens ``ids``."""
        ids = [int(i) for i in ids]
        negator, negated, count, at = [], [], 0, 0
        while at < len(ids):
            word = next((w for w in self.words.get(ids[at], ()) if tuple(ids[at:at + len(w)]) == w), None)
            if word is not None:  # a negator of several tokens: one negation
                count += 1
                negator += [True] * len(word)
                negated += [False] * len(word)
                at += len(word)
                continue
            role = self.roles.get(ids[at])
            if role == BREAK:
                count = 0
            elif role == NEGATOR:
                count += 1
            negator.append(role == NEGATOR)
            negated.append(role is None and count % 2 == 1)
            at += 1
        return negator, negated

    def __call__(
        self, input_ids: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
        keep = keep.cpu()
        flags = torch.zeros((2, *input_ids.shape), dtype=torch.bool)  # negators, negated
        for b, ids in enumerate(input_ids.cpu()):
            key = tuple(ids[keep[b]].tolist())
            parts = self._read.get(key)
            if parts is None:  # kept as numbers.NumberReader keeps its rows: training repeats the prompts
                parts = tuple(torch.tensor(part, dtype=torch.bool) for part in self.token_parts(key))
                if len(self._read) >= self._memory:
                    self._read.clear()
                self._read[key] = parts
            for kind, part in enumerate(parts):
                flags[kind, b, keep[b]] = part
        negators, negated = flags.to(input_ids.device)
        return negators, negated
