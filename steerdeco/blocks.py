"""Passes over ``[rows, vocabulary]`` on a CPU, a few rows at a time.

The logit compression of the backbone cache and the probability features of full logits make several
elementwise passes over every row's whole vocabulary. On a CPU these passes are bound by memory, not
by arithmetic: on a block of rows small enough to stay in the CPU's cache, the later passes read the
cache instead of memory. :func:`row_blocks` says where to cut; on other devices, or with few rows,
one pass over everything is best.
"""

from __future__ import annotations

import torch

# values per block: a few rows of a large vocabulary, small enough for a core's cache with a temporary or two
CPU_BLOCK_ELEMENTS = 200_000


def row_blocks(rows: torch.Tensor) -> list[slice] | None:
    """Slices of the first dimension of ``rows [N, V]`` into blocks of about :data:`CPU_BLOCK_ELEMENTS`
    values each; None where the tensor should be worked on whole (not on a CPU, or one block or less)."""
    per_block = max(1, CPU_BLOCK_ELEMENTS // max(1, rows.shape[-1]))
    if rows.device.type != "cpu" or rows.shape[0] <= per_block:
        return None
    return [slice(start, start + per_block) for start in range(0, rows.shape[0], per_block)]
