"""Running sums of the steering metrics between two logs: loss terms, mean T and P per variant, ordering.

The trainer adds one batch at a time (:meth:`SteeringMetrics.record`) and, at each log, takes the
averages since the last one (:meth:`SteeringMetrics.averages`) after summing the ``[keys, 2]``
tables (total, count) over processes. Train and eval keep separate tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..ranking import sequence_means
from ..rows import VARIANTS
from .evaluation import QUANTITIES, summarize_ordering
from .objective import LOSS_TERMS

MODES = ("train", "eval")
SATURATED_TOP_P = 0.999  # a mean no-command top-p above this: the head sits where the soft top-p loss is flat


def top_p_saturation(logs: Mapping[str, float]) -> str | None:
    """A warning when a log's mean no-command top-p (``mean_top_p/none``) is above :data:`SATURATED_TOP_P`.

    The soft top-p loss has no gradient in P once P is above the mass before every kept token, and the
    sigmoid's gradient vanishes there too, so a top-p head pushed that far tends to stay at 1 (and the
    commands can no longer lower or raise it). None when the log has no such value or it is below.
    """
    value = logs.get("mean_top_p/none")
    if value is None or value <= SATURATED_TOP_P:
        return None
    return (
        f"the top-p head is saturated (mean no-command top-p {value:.4f}): the soft top-p loss has no gradient "
        "there and the head may stay at 1; a longer warmup (--warmup_steps) or a lower --learning_rate avoids it"
    )


class SteeringMetrics:
    """Per-mode ``(total, count)`` sums of every metric key.

    Keys: every loss term and ``base_lm_loss``; ``mean_temperature/VARIANT`` and ``mean_top_p/VARIANT``;
    ``ordered_temperature/SPLIT`` and ``ordered_top_p/SPLIT`` (share of groups ordered low < none < high
    per command split).

    Args:
        split_names: the command splits, indexed like the batch's ``command_split`` column.
    """

    def __init__(self, split_names: Sequence[str]):
        self.split_names = list(split_names)
        self.keys = [
            *LOSS_TERMS,
            "base_lm_loss",
            *(f"mean_{q}/{v}" for q in QUANTITIES for v in VARIANTS),
            *(f"ordered_{q}/{s}" for q in QUANTITIES for s in self.split_names),
        ]
        self._index = {key: i for i, key in enumerate(self.keys)}
        self.sums = {mode: torch.zeros(len(self.keys), 2, dtype=torch.float64) for mode in MODES}

    def add(self, mode: str, key: str, total: float, count: float = 1.0) -> None:
        """Add ``total`` over ``count`` items to ``key`` (an unknown key is ignored)."""
        index = self._index.get(key)
        if index is not None:
            self.sums[mode][index, 0] += total
            self.sums[mode][index, 1] += count

    def record(self, mode: str, terms: Mapping[str, torch.Tensor], outputs, inputs: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: the loss ``terms`` (scalars), and from ``outputs.temperature``/``top_p [R, N]`` and the
        batch's ``response_mask [R, N]``, ``variant``, ``command_split``, ``groups [R]`` the means per variant
        and whether each group is ordered."""
        for name, value in terms.items():
            self.add(mode, name, float(value.detach()))
        mask = inputs["response_mask"].bool()
        has_tokens = mask.any(-1)
        means = {
            "temperature": sequence_means(outputs.temperature.detach().float(), mask).cpu(),
            "top_p": sequence_means(outputs.top_p.detach().float(), mask).cpu(),
        }
        variants = inputs["variant"].cpu().tolist()
        splits = inputs["command_split"].cpu().tolist()
        groups = inputs["groups"].cpu().tolist()
        records = []
        for r, (variant, split, group) in enumerate(zip(variants, splits, groups, strict=True)):
            if not bool(has_tokens[r]):
                continue
            name = VARIANTS[variant]
            for quantity in QUANTITIES:
                self.add(mode, f"mean_{quantity}/{name}", float(means[quantity][r]))
            records.append(
                {
                    "group_id": group,
                    "variant": name,
                    "command_split": self.split_names[split] if split >= 0 else None,
                    "temperature": float(means["temperature"][r]),
                    "top_p": float(means["top_p"][r]),
                }
            )
        for unit in summarize_ordering(records)["units"]:
            for quantity in QUANTITIES:
                ordered = unit[f"{quantity}_ordered"]
                if ordered is not None:
                    self.add(mode, f"ordered_{quantity}/{unit['command_split']}", float(ordered))

    def averages(self, sums: torch.Tensor, prefix: str = "") -> dict[str, float]:
        """``{prefix + key: total / count}`` of a ``[keys, 2]`` table (``sums[mode]``, maybe summed over processes)
        for every key with a count."""
        return {prefix + key: total / count for key, (total, count) in zip(self.keys, sums.tolist(), strict=True) if count > 0}

    def reset(self, mode: str) -> None:
        """Start the next logging interval of ``mode``."""
        self.sums[mode].zero_()
