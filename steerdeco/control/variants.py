"""From prompts and commands to rows: the prompt-level train/eval split and the command variants of each group.

Every prompt is one *group*: one ``none`` row (no command), then for each graded direction
(``low``, ``high``) and each of its levels ``commands_per_level`` commands, then ``placebos``
placebo commands, then ``named_per_group`` commands that name a value (variant ``named``: a
temperature, then a top-p, alternately; values from the phrasing grammar's ``train_values`` on train
prompts and ``eval_values`` on eval prompts). Train prompts draw only ``train`` phrasings (and, with ``train_commands``, keep a seeded sample of
that set, so that more prompts fit in the same rows); eval
prompts draw that whole set once from the ``train`` phrasings and once from the ``heldout`` ones.
All rows of a group share the prompt's response.

Commands are dealt from shuffled decks (one per prompt split, direction, level and phrasing
split) so that every phrasing is used about equally often; placements (``--placement sample``)
are drawn per row. Everything is seeded: the same prompts, commands and seed give the same rows.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

from ..errors import ControlDataError
from ..rows import COLUMNS, PROMPT_SPLITS, VARIANTS  # noqa: F401 - the row contract, used and handed on
from .commands import COMMAND_SPLITS, GRADED_DIRECTIONS, Command, CommandLibrary
from .insertion import choose_placement, insert_command
from .phrasings import NAMED_QUANTITIES, PhrasingGrammar
from .prompts import Prompt

logger = logging.getLogger(__name__)



def derive_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed from ``seed`` and labels, stable across Python runs (unlike ``hash``)."""
    digest = hashlib.sha256(repr((int(seed), *map(str, parts))).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def select_prompts(prompts: Sequence[Prompt], max_prompts: int | None, seed: int) -> list[Prompt]:
    """At most ``max_prompts`` prompts, a seeded random subset kept in source order (``None``: all)."""
    if max_prompts is None or max_prompts >= len(prompts):
        return list(prompts)
    if max_prompts < 1:
        raise ControlDataError(f"--max-prompts must be at least 1, got {max_prompts}")
    order = list(range(len(prompts)))
    random.Random(derive_seed(seed, "max_prompts")).shuffle(order)
    keep = sorted(order[:max_prompts])
    return [prompts[i] for i in keep]


def assign_splits(
    prompts: Sequence[Prompt], eval_fraction: float, seed: int, eval_sources: Sequence[str] | None = None
) -> dict[str, str]:
    """``{prompt id: "train" | "eval"}``: ``round(eval_fraction * n)`` eval prompts, stratified by category.

    Each category gets its proportional share of eval prompts (largest remainders break ties, in
    category order), chosen by a seeded shuffle within the category. With ``eval_sources``, only
    prompts of those sources can be eval prompts (``n`` counts them alone); the others all train.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ControlDataError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    by_category: dict[str, list[str]] = defaultdict(list)
    splits = {}
    for prompt in prompts:
        if eval_sources is not None and prompt.source not in eval_sources:
            splits[prompt.id] = "train"
            continue
        by_category[prompt.category].append(prompt.id)
    categories = sorted(by_category)
    total = round(eval_fraction * sum(map(len, by_category.values())))
    quotas = {c: eval_fraction * len(by_category[c]) for c in categories}
    counts = {c: int(quotas[c]) for c in categories}
    remainders = sorted(categories, key=lambda c: (-(quotas[c] - counts[c]), c))
    for category in remainders[: total - sum(counts.values())]:
        counts[category] += 1
    for category in categories:
        ids = list(by_category[category])
        random.Random(derive_seed(seed, "split", category)).shuffle(ids)
        for position, prompt_id in enumerate(ids):
            splits[prompt_id] = "eval" if position < counts[category] else "train"
    return splits


class _Deck:
    """Deals commands in shuffled rounds so that each is used about equally often."""

    def __init__(self, commands: Sequence[Command], rng: random.Random):
        self.commands = list(commands)
        self.rng = rng
        self.queue: list[Command] = []

    def draw(self, count: int) -> list[Command]:
        """``min(count, len(commands))`` distinct commands."""
        count = min(count, len(self.commands))
        chosen: list[Command] = []
        deferred: list[Command] = []
        while len(chosen) < count:
            if not self.queue:
                self.queue = list(self.commands)
                self.rng.shuffle(self.queue)
            command = self.queue.pop()
            (deferred if command in chosen else chosen).append(command)
        self.queue.extend(reversed(deferred))
        return chosen


def _row(prompt: Prompt, split: str, response: str | None, command: Command | None, placement: str | None) -> dict:
    messages = prompt.conversation() if command is None else insert_command(prompt.messages, command.text, placement)
    return {
        "group_id": prompt.id,
        "prompt_id": prompt.id,
        "source": prompt.source,
        "category": prompt.category,
        "split": split,
        "variant": "none" if command is None else command.direction,
        "level": 0 if command is None else command.level,
        "command_id": None if command is None else command.id,
        "command_split": None if command is None else command.split,
        "command": None if command is None else command.text,
        "target_temperature": None if command is None else command.target_temperature,
        "target_top_p": None if command is None else command.target_top_p,
        "placement": placement,
        "messages": messages,
        "response": response,
    }


def plan_rows(
    prompts: Sequence[Prompt],
    splits: Mapping[str, str],
    library: CommandLibrary,
    *,
    seed: int,
    placement: str = "sample",
    commands_per_level: int = 1,
    train_commands_per_level: int | None = None,
    placebos: int = 1,
    responses: Mapping[str, str | None] | None = None,
    grammar: PhrasingGrammar | None = None,
    named_per_group: int = 0,
    train_commands: int | None = None,
) -> list[dict]:
    """Rows (dicts with :data:`COLUMNS`) for every prompt, grouped, in prompt order.

    Args:
        prompts: the prompts; each becomes a group with ``group_id == prompt_id``.
        splits: ``{prompt id: "train" | "eval"}`` (see :func:`assign_splits`).
        library: the commands.
        seed: seeds the decks and the placements.
        placement: ``sample`` or a fixed ``before``/``after``/``system``.
        commands_per_level: distinct commands per direction and level (per phrasing split on eval
            prompts); capped by the number of phrasings available.
        train_commands_per_level: the same on train prompts (None: ``commands_per_level``). Train groups
            that draw several wordings of each level teach the heads more wordings per response; eval
            groups, and so every held-out row, do not change with it.
        placebos: placebo commands per group (per phrasing split on eval prompts).
        responses: ``{prompt id: response}``; missing ids get ``None``.
        grammar: writes the ``named`` commands (needed when ``named_per_group > 0``).
        named_per_group: commands naming a value per group (per phrasing split on eval prompts).
        train_commands: on train prompts, keep a seeded sample of this many of the group's commands
            (all levels, placebos and named values are drawn as usual, then sampled), so that more
            prompts fit in the same number of rows; None keeps them all. Eval prompts keep them all.
    """
    if commands_per_level < 1:
        raise ControlDataError(f"--commands-per-level must be at least 1, got {commands_per_level}")
    if train_commands_per_level is not None and train_commands_per_level < 1:
        raise ControlDataError(f"--train-commands-per-level must be at least 1, got {train_commands_per_level}")
    per_level = {"eval": commands_per_level, "train": commands_per_level if train_commands_per_level is None else train_commands_per_level}
    if placebos < 0:
        raise ControlDataError(f"--placebos must be at least 0, got {placebos}")
    if named_per_group < 0:
        raise ControlDataError(f"--named-per-group must be at least 0, got {named_per_group}")
    if train_commands is not None and train_commands < 1:
        raise ControlDataError(f"--train-commands must be at least 1, got {train_commands}")
    if named_per_group and (grammar is None or not all(q in grammar.named for q in NAMED_QUANTITIES)):
        raise ControlDataError("--named-per-group needs a phrasing grammar with named temperature and top_p frames (--phrasings)")
    choose_placement(placement, random.Random(0))  # validates the mode
    responses = responses or {}
    decks: dict[tuple, _Deck] = {}

    def deck(prompt_split: str, direction: str, level: int, command_split: str) -> _Deck:
        key = (prompt_split, direction, level, command_split)
        if key not in decks:
            pool = library.select(direction=direction, level=level, split=command_split)
            decks[key] = _Deck(pool, random.Random(derive_seed(seed, "deck", *key)))
        return decks[key]

    rows = []
    for prompt in prompts:
        split = splits[prompt.id]
        if split not in PROMPT_SPLITS:
            raise ControlDataError(f"prompt {prompt.id!r} has split {split!r}; expected one of {PROMPT_SPLITS}")
        rng = random.Random(derive_seed(seed, "placement", prompt.id))
        response = responses.get(prompt.id)
        rows.append(_row(prompt, split, response, None, None))
        command_splits = COMMAND_SPLITS if split == "eval" else ("train",)
        for command_split in command_splits:
            chosen: list[Command] = []
            for direction in GRADED_DIRECTIONS:
                for level in library.levels(direction):
                    chosen.extend(deck(split, direction, level, command_split).draw(per_level[split]))
            if placebos:
                chosen.extend(deck(split, "placebo", 0, command_split).draw(placebos))
            for number in range(named_per_group):
                quantity = NAMED_QUANTITIES[number % len(NAMED_QUANTITIES)]
                named_rng = random.Random(derive_seed(seed, "named", prompt.id, command_split, number))
                value = named_rng.choice(grammar.values(quantity, split))
                chosen.append(grammar.named_command(quantity, value, command_split, named_rng))
            if split == "train" and train_commands is not None and train_commands < len(chosen):
                keep = sorted(random.Random(derive_seed(seed, "train_commands", prompt.id)).sample(range(len(chosen)), train_commands))
                chosen = [chosen[i] for i in keep]
            for command in chosen:
                rows.append(_row(prompt, split, response, command, choose_placement(placement, rng)))
    return rows
