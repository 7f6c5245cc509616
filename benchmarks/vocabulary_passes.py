"""The per-position passes over the whole vocabulary on a CPU, each against its plain form.

* **Cache**: :func:`steerdeco.losses.compress_logits` on the logits of one cache batch (16 rows of
  24 response positions), worked in blocks of a few rows (as the backbone cache runs it) against
  the whole batch at once.
* **Features**: the heads' probability features of full logits (what teacher-forced scoring
  through the backbone and every decoding step compute) for the same 384 positions, in blocks of
  rows against at once.
* **Decoding**: :func:`steerdeco.decoding.top_k_top_p_filter` (top-k 50, a top-p per row) on one
  decoding step of 48 rows, against the rule it implements: transformers' ``TopKLogitsWarper``, then
  :func:`steerdeco.decoding.top_p_filter`, which sorts the whole vocabulary.

Logits are random, of the embedded model's vocabulary, rounded to bfloat16 as a bf16 backbone gives
them (many equal values, so top-k keeps ties). Each pair alternates in one process after a warm-up;
the outputs are checked to be the same first. The last three lines are the median ratios plain / ours.

    python benchmarks/vocabulary_passes.py [--repeats 15] [--vocab 49152]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import fields

import torch
from transformers import TopKLogitsWarper

import steerdeco.blocks as blocks
from steerdeco.decoding import top_k_top_p_filter, top_p_filter
from steerdeco.heads import probability_features
from steerdeco.losses import LogitSlots, compress_logits


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs per comparison (default 15)")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (default: the embedded model's)")
    return parser


def _seconds(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def median_ratio(plain, ours, repeats: int) -> float:
    """Median over ``repeats`` alternating pairs of plain time / our time, after one warm-up call of each."""
    plain(), ours()
    return statistics.median(_seconds(plain) / _seconds(ours) for _ in range(repeats))


def in_one_block(function, *args):
    """``function(*args)`` with every tensor worked on whole (:func:`steerdeco.blocks.row_blocks` cuts nothing)."""
    saved = blocks.CPU_BLOCK_ELEMENTS
    blocks.CPU_BLOCK_ELEMENTS = 2**62
    try:
        return function(*args)
    finally:
        blocks.CPU_BLOCK_ELEMENTS = saved


def main(args: argparse.Namespace) -> dict[str, float]:
    if args.repeats < 1 or args.vocab < 1024:
        raise SystemExit("--repeats must be >= 1 and --vocab >= 1024")
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(16 * 24, args.vocab, generator=generator) * 3).bfloat16()
    targets = torch.randint(0, args.vocab, (logits.shape[0],), generator=generator)
    blocked, whole = compress_logits(logits, targets), in_one_block(compress_logits, logits, targets)
    if not all(torch.equal(getattr(blocked, f.name), getattr(whole, f.name)) for f in fields(LogitSlots)):
        raise SystemExit("compress_logits gave other slots in blocks than at once")
    cache = median_ratio(lambda: in_one_block(compress_logits, logits, targets), lambda: compress_logits(logits, targets), args.repeats)

    full = logits.float()
    temperature = torch.rand(full.shape[0], generator=generator) + 0.3
    torch.testing.assert_close(probability_features(full, temperature), in_one_block(probability_features, full, temperature),
                               rtol=1e-5, atol=1e-7)  # blocks take torch.dot, the whole batch a product and a sum
    features = median_ratio(lambda: in_one_block(probability_features, full, temperature),
                            lambda: probability_features(full, temperature), args.repeats)

    scores = (torch.randn(48, args.vocab, generator=generator) * 3).bfloat16().float()
    top_p = torch.rand(48, generator=generator) * 0.9 + 0.05
    warper = TopKLogitsWarper(50)

    def plain():
        return top_p_filter(warper(None, scores), top_p)

    if not torch.equal(torch.isfinite(plain()).sum(-1), torch.isfinite(top_k_top_p_filter(scores, 50, top_p)).sum(-1)):
        raise SystemExit("top_k_top_p_filter kept other numbers of tokens than the plain rule")
    decoding = median_ratio(plain, lambda: top_k_top_p_filter(scores, 50, top_p), args.repeats)
    print(f"vocabulary {args.vocab}, {torch.get_num_threads()} threads, {args.repeats} pairs each")
    print(f"cache, compress_logits of 384 positions: median whole-batch / blocked time ratio {cache:.2f}")
    print(f"features, probability features of 384 positions: median whole-batch / blocked time ratio {features:.2f}")
    print(f"decoding, top-k then top-p of 48 rows: median plain-rule / ours time ratio {decoding:.2f}")
    return {"compress_logits": cache, "probability_features": features, "top_k_top_p_filter": decoding}


if __name__ == "__main__":
    main(make_parser().parse_args())
