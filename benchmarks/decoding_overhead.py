"""Dynamic decoding against static sampling with the same T and P, on the embedded model.

Batch 1 and batch 4 (``--batch-sizes``), 128 new tokens (EOS suppressed with min_new_tokens so both
do the same work), fresh heads (they predict T = 1.0, P = 0.9 everywhere, so static sampling uses
exactly those). For each batch size the two runs alternate in one process, after a warm-up of
each; the last lines are the median of the per-pair ratios dynamic / static, one per batch size.

    python benchmarks/decoding_overhead.py [--repeats 9] [--batch-sizes 1,4] [--context-features]

``--context-features`` measures heads that also read the running context (the steering configs'
heads), which adds a decoder hook and a running sum to every step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from steerdeco import AutoDecoModel, HeadsConfig
from steerdeco.embedded import load_embedded_model
from steerdeco.hooks import contiguous_lm_head_input

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how vaccines train the immune system.",
    "Describe a walk through a busy market in Marrakesh.",
    "What are the pros and cons of remote work?",
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed pairs per batch size (default 9)")
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per sequence (default 128)")
    parser.add_argument(
        "--context-features", action="store_true", help="heads with context features (as the steering configs train)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    return parser


def measure(model, base, tokenizer, batch_size: int, new_tokens: int, repeats: int) -> tuple[float, float, float]:
    """``(median ratio, T, P)`` of ``repeats`` alternating pairs at one batch size."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
    batch = tokenizer.apply_chat_template(
        [[{"role": "user", "content": p}] for p in prompts],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
        padding=True,
    )
    with torch.no_grad():
        probe = model(**batch)
    temperature, top_p = float(probe.temperature[0, -1]), float(probe.top_p[0, -1])
    common = dict(**batch, do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens, top_k=50)

    def dynamic():
        return model.generate(**common)

    def static():  # the lm_head gets the same contiguous input as in dynamic decoding: only the heads differ
        with contiguous_lm_head_input(base):
            return base.generate(**common, temperature=temperature, top_p=top_p)

    def timed(fn) -> float:
        torch.manual_seed(0)
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        if out.shape[1] != batch["input_ids"].shape[1] + new_tokens:
            raise RuntimeError(f"generated {out.shape[1] - batch['input_ids'].shape[1]} tokens, not {new_tokens}")
        return elapsed

    timed(dynamic), timed(static)  # warm-up
    ratios = []
    for i in range(repeats):
        if i % 2 == 0:
            d, s = timed(dynamic), timed(static)
        else:
            s, d = timed(static), timed(dynamic)
        ratios.append(d / s)
        print(f"batch {batch_size}, pair {i + 1}: dynamic {d:.2f} s, static {s:.2f} s, ratio {d / s:.4f}", flush=True)
    return statistics.median(ratios), temperature, top_p


def main(args: argparse.Namespace) -> dict[int, float]:
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--batch-sizes must be positive integers such as 1,4; got {args.batch_sizes!r}")
    base, tokenizer = load_embedded_model()
    model = AutoDecoModel(
        base, HeadsConfig(hidden_size=base.config.hidden_size, context_features=args.context_features)
    )
    heads = "context-feature heads" if args.context_features else "AutoDeco heads"
    medians = {}
    for size in sizes:
        medians[size], temperature, top_p = measure(model, base, tokenizer, size, args.new_tokens, args.repeats)
    print(f"{heads}, T={temperature:.3f} P={top_p:.3f}, {args.new_tokens} new tokens, {args.repeats} pairs per batch size")
    for size, median in medians.items():
        print(f"batch {size}: median dynamic/static time ratio {median:.4f}")
    return medians


if __name__ == "__main__":
    main(make_parser().parse_args())
