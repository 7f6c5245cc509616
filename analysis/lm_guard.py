"""The LM-loss guard (issue 12 point 5): a model's token-level LM loss on human-written text vs the base model's.

Training the heads alone leaves the backbone untouched, so its language model is the base model's by
construction. A LoRA-joint run changes it; the guard asks whether it still predicts text that it did
*not* write as well as before: the mean per-token cross-entropy of the response tokens of
human-written ``(prompt, answer)`` pairs (by default the worked answers of GSM8K test questions,
:func:`steerdeco.control.prompts.load_gsm8k`), teacher-forced after the prompt in the chat template,
for the model and for the base model (the same network with its LoRA adapter switched off).

The model passes when the relative change of the token-weighted mean loss,
``model loss / base loss - 1``, is within :data:`BOUND` either way. With it come a 95% paired
percentile bootstrap CI over examples (:func:`scipy.stats.bootstrap`, ``paired=True``) and a paired
t-test of the per-example mean losses (:func:`scipy.stats.ttest_rel`).

    from analysis.lm_guard import guard_examples, lm_guard

    result = lm_guard(model, tokenizer, guard_examples("gsm8k", 200, seed=0))
    result.relative_change, result.passed

Shapes: ``B`` examples per batch, ``L`` padded length, ``K`` response tokens of a batch, ``V`` vocabulary.
Imports torch and steerdeco only when a model is scored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)

BOUND = 0.02  # issue 12.5: the model's loss within 2% of the base model's
DEFAULT_SOURCE = "gsm8k"
DEFAULT_EXAMPLES = 200
N_BOOT = 2000
#: ``LMGuardResult.backbone``: how the model's backbone relates to the base model's.
BACKBONES = ("lora", "unchanged", "separate")


@dataclass(frozen=True)
class LMGuardResult:
    """The guard's numbers; losses are token-weighted mean cross-entropies in nats per response token.

    ``backbone``: ``lora`` (base = the same network with its adapter switched off), ``unchanged``
    (no adapter: the model's LM *is* the base model's, scored once, change 0 by construction) or
    ``separate`` (two networks given). ``p_value``: paired t-test of per-example mean losses (None
    when every difference is 0). ``ci_low`` / ``ci_high``: 95% CI of ``relative_change``.
    """

    source: str
    n_examples: int
    n_tokens: int
    seed: int
    base_loss: float
    model_loss: float
    relative_change: float
    ci_low: float
    ci_high: float
    p_value: float | None
    bound: float
    passed: bool
    backbone: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def guard_examples(
    source: str = DEFAULT_SOURCE, n_examples: int = DEFAULT_EXAMPLES, seed: int = 0, exclude_ids: Iterable[str] = ()
) -> list:
    """A seeded subset of at most ``n_examples`` prompts with a human-written ``completion``, in source order.

    Args:
        source: a prompt source of :func:`steerdeco.control.prompts.load_source` (``gsm8k``, or a JSONL
            file whose lines carry ``completion``).
        exclude_ids: prompt ids to leave out, e.g. the ``prompt_id`` of every control-data row, so that
            the guard never scores text the model was trained on.

    Raises:
        ValueError: a bad ``n_examples``, a source that fails to load, or one without completions.
    """
    from steerdeco.control.prompts import load_source

    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"the LM guard needs a number of examples >= 1, got {n_examples!r}")
    excluded = set(exclude_ids)
    prompts = [p for p in load_source(source) if p.completion and p.id not in excluded]
    if not prompts:
        raise ValueError(f"{source}: no prompt has a 'completion' (the human-written answer the LM guard scores)"
                         + (f" outside the {len(excluded)} excluded prompt ids" if excluded else ""))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(prompts))[: min(n_examples, len(prompts))])
    if n_examples > len(prompts):
        logger.warning("LM guard: %s has %d examples with completions, fewer than the %d asked for", source, len(prompts),
                       n_examples)
    return [prompts[i] for i in chosen]


def _backbone(model):
    """The causal LM under an :class:`~steerdeco.AutoDecoModel` (heads do not change the LM loss), or ``model``."""
    return model.base_model if hasattr(model, "heads") and hasattr(model, "base_model") else model


def response_losses(
    model, tokenizer, examples: Sequence, batch_size: int = 8, max_response_tokens: int | None = None
) -> list[np.ndarray]:
    """Per-token cross-entropy (nats, float64) of each example's ``completion`` after its conversation.

    The examples are encoded like training rows (:func:`steerdeco.chat.encode_example`: chat template,
    response tokenised alone, EOS appended), batched by length and right-padded. The decoder runs on
    the whole batch (``[B, L, H]``) and the lm_head only on the ``K`` response positions (``[K, H] ->
    [K, V]``), as the training's backbone pass does.

    Args:
        model: a causal LM (a peft model too; its adapter as it is switched now) or an
            :class:`~steerdeco.AutoDecoModel` (its backbone).
        examples: :class:`~steerdeco.control.prompts.Prompt` records with a ``completion``.

    Returns:
        One ``[n_i]`` array per example, in the order of ``examples``.
    """
    import torch
    import torch.nn.functional as F

    from steerdeco.chat import encode_example, pad_batch
    from steerdeco.hooks import decoder, output_embeddings
    from steerdeco.losses import IGNORE_INDEX

    lm = _backbone(model)
    if tokenizer.pad_token_id is None:
        raise ValueError("the LM guard pads batches: the tokenizer needs a pad token")
    missing = [getattr(e, "id", i) for i, e in enumerate(examples) if not getattr(e, "completion", None)]
    if missing:
        raise ValueError(f"{len(missing)} examples have no completion to score (first {missing[0]!r})")
    encoded = [encode_example(tokenizer, e.conversation(), e.completion, max_response_tokens) for e in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    device = next(lm.parameters()).device
    head = output_embeddings(lm)
    out: list[np.ndarray | None] = [None] * len(encoded)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = pad_batch([encoded[i] for i in index], tokenizer.pad_token_id, padding_side="right")
            output = decoder(lm)(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                                 use_cache=False)
            hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state  # [B, L, H]
            targets = batch["labels"][:, 1:].to(device)  # position t predicts token t + 1
            valid = targets != IGNORE_INDEX
            logits = head(hidden[:, :-1][valid])  # [K, V]
            losses = F.cross_entropy(logits.float(), targets[valid], reduction="none")
            for i, row in zip(index, losses.split(valid.sum(dim=1).tolist()), strict=True):
                out[i] = row.double().cpu().numpy()
    return out


def _change(base_sums: np.ndarray, model_sums: np.ndarray, axis: int = -1) -> np.ndarray:
    # both losses are over the same tokens: the ratio of token-weighted means is the ratio of sums
    return model_sums.sum(axis=axis) / base_sums.sum(axis=axis) - 1.0


def compare(
    base: Sequence[np.ndarray],
    model: Sequence[np.ndarray],
    *,
    source: str = "",
    seed: int = 0,
    bound: float = BOUND,
    n_boot: int = N_BOOT,
    backbone: str = "separate",
    seconds: float = 0.0,
) -> LMGuardResult:
    """The guard's statistics of paired per-token losses (``base[i]`` and ``model[i]``: ``[n_i]`` arrays).

    Raises:
        ValueError: unpaired inputs (other counts or lengths), no tokens, or a non-positive base loss.
    """
    if len(base) != len(model) or not base:
        raise ValueError(f"the LM guard pairs examples: got {len(base)} base and {len(model)} model loss arrays")
    lengths = np.array([len(b) for b in base])
    if any(len(b) != len(m) for b, m in zip(base, model, strict=True)) or (lengths == 0).any():
        raise ValueError("every example needs the same, non-zero number of response tokens under both models")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    base_sums = np.array([float(np.sum(b)) for b in base])
    model_sums = np.array([float(np.sum(m)) for m in model])
    if not base_sums.sum() > 0:
        raise ValueError("the base model's LM loss is 0: nothing to compare against")
    change = float(_change(base_sums, model_sums))
    if np.array_equal(base_sums, model_sums):
        low = high = change
        p_value = None
    else:
        boot = stats.bootstrap((base_sums, model_sums), _change, paired=True, vectorized=True, n_resamples=n_boot,
                               confidence_level=0.95, method="percentile", random_state=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        p = float(stats.ttest_rel(model_sums / lengths, base_sums / lengths).pvalue)
        p_value = p if math.isfinite(p) else None
    n_tokens = int(lengths.sum())
    return LMGuardResult(
        source=source, n_examples=len(base), n_tokens=n_tokens, seed=seed,
        base_loss=float(base_sums.sum() / n_tokens), model_loss=float(model_sums.sum() / n_tokens),
        relative_change=change, ci_low=low, ci_high=high, p_value=p_value, bound=bound,
        passed=bool(abs(change) <= bound), backbone=backbone, seconds=seconds,
    )  # fmt: skip


def lm_guard(
    model,
    tokenizer,
    examples: Sequence,
    base_model=None,
    *,
    source: str = DEFAULT_SOURCE,
    seed: int = 0,
    bound: float = BOUND,
    batch_size: int = 8,
    max_response_tokens: int | None = None,
    n_boot: int = N_BOOT,
) -> LMGuardResult:
    """The guard of ``model`` against its base model on ``examples`` (see :func:`guard_examples`).

    Args:
        model: an :class:`~steerdeco.AutoDecoModel` or a causal LM; with a LoRA adapter (a peft
            backbone) the base is the same network with the adapter switched off.
        base_model: the base model as a separate network (e.g. after ``merge_and_unload``); None: as above.
        source, seed: recorded in the result (``seed`` also seeds the bootstrap).

    Without an adapter and without ``base_model``, the model's LM is the base model's: it is scored once
    and the change is 0 by construction (``backbone="unchanged"``).
    """
    started = time.perf_counter()
    lm = _backbone(model)
    score = lambda net: response_losses(net, tokenizer, examples, batch_size, max_response_tokens)  # noqa: E731
    if base_model is not None:
        backbone, model_losses, base_losses = "separate", score(lm), score(_backbone(base_model))
    elif hasattr(lm, "disable_adapter"):  # peft: the adapter switched off is the base model
        backbone, model_losses = "lora", score(lm)
        with lm.disable_adapter():
            base_losses = score(lm)
    else:
        backbone = "unchanged"
        model_losses = base_losses = score(lm)
    result = compare(base_losses, model_losses, source=source, seed=seed, bound=bound, n_boot=n_boot,
                     backbone=backbone, seconds=time.perf_counter() - started)
    logger.info("LM guard on %d %s answers (%d tokens): base %.4f, model %.4f nats/token, change %+.2f%% (%s)",
                result.n_examples, source, result.n_tokens, result.base_loss, result.model_loss,
                100 * result.relative_change, "pass" if result.passed else "FAIL")
    return result


def guard_markdown(entry: Mapping | None) -> list[str]:
    """The report's section on the guard (Markdown lines) from ``LMGuardResult.to_dict()``; none without one."""
    if not entry:
        return []
    how = {
        "lora": "the same network with its LoRA adapter switched off",
        "unchanged": "the model's own backbone: no adapter, so the LM is the base model's by construction",
        "separate": "a separate base network",
    }.get(entry.get("backbone"), "the base model")
    p = entry.get("p_value")
    lines = [
        "## LM loss on human-written text (LM guard)", "",
        f"Mean cross-entropy per response token of {entry['n_examples']} human-written answers ({entry['source']}, "
        f"seed {entry['seed']}, {entry['n_tokens']} tokens), teacher-forced after the question; base model: {how}. "
        f"Target: within {entry['bound']:.0%} of the base model.", "",
        "| Base model | This model | Change | 95% CI (paired bootstrap) | p (paired t) | Result |",
        "|---|---|---|---|---|---|",
        f"| {entry['base_loss']:.4f} | {entry['model_loss']:.4f} | {entry['relative_change']:+.2%} | "
        f"[{entry['ci_low']:+.2%}, {entry['ci_high']:+.2%}] | {'—' if p is None else f'{p:.3g}'} | "
        f"{'pass' if entry['passed'] else 'FAIL'} |", "",
    ]  # fmt: skip
    return lines
