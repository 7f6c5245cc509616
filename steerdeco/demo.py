"""The README's main job: dynamic decoding on the embedded SmolLM2-135M-Instruct model.

``python -m steerdeco.demo`` generates from the embedded model with AutoDeco heads (freshly
initialised, or loaded with ``--heads DIR``) for a few prompts and prints each text with the
temperature and top-p predicted for every token.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Write a two-line poem about autumn leaves.",
    "Answer with as little randomness as possible: what is 12 times 7?",
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steerdeco.demo", description=__doc__.split("\n\n")[1])
    parser.add_argument("--heads", default=None, help="heads folder saved by AutoDecoModel.save_pretrained (default: fresh heads)")
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; default: 3 built-in prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    return parser


def format_trace(tokenizer, prompt: str, row: dict) -> str:
    """A prompt, its generated text and a token / T / P table."""
    lines = [f"### {prompt}", tokenizer.decode(row["token_ids"], skip_special_tokens=True).strip(), "token            T      P"]
    for token_id, t, p in zip(row["token_ids"], row["temperature"], row["top_p"], strict=True):
        piece = repr(tokenizer.decode([token_id]))[:16]
        lines.append(f"{piece:<16} {t:5.3f}  {p:5.3f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from .embedded import load_embedded_model
    from .modeling import AutoDecoModel

    if args.max_new_tokens < 1:
        raise SystemExit(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    base, tokenizer = load_embedded_model()
    model = AutoDecoModel(base) if args.heads is None else AutoDecoModel.from_pretrained(args.heads, base_model=base)
    prompts = args.prompt or DEFAULT_PROMPTS
    batch = tokenizer.apply_chat_template(
        [[{"role": "user", "content": p}] for p in prompts],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
        padding=True,
    )
    torch.manual_seed(args.seed)
    trace = model.generate_with_trace(**batch, do_sample=True, max_new_tokens=args.max_new_tokens)
    heads = "fresh heads" if args.heads is None else f"heads from {args.heads}"
    print(f"Dynamic decoding on the embedded SmolLM2-135M-Instruct with {heads}\n")
    for prompt, row in zip(prompts, trace.rows(), strict=True):
        print(format_trace(tokenizer, prompt, row) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(make_parser().parse_args()))
