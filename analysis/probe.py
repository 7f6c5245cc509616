"""Can a command be read from the prompt at all? A quick readout probe on one decoder layer's prompt states.

Before training heads on a new phrasing grammar, data option or context layer, ask the cheaper
question: given the prompt's states at decoder layer ``layer`` (what ``heads_context_layer`` pools),
does a small readout, fitted on the training prompts' rows, tell the commanded log T ratio of the
held-out prompts' rows, with train and with held-out wordings? The readout is the heads' own
attention pooling (:class:`steerdeco.heads.PromptAttentionPool`) and an MLP, regressed to the log
ratio each row's command asks for (low/high level k: ``log(ratios[k-1])``, the training objective's
default ratios; no command and placebo: 0; a named temperature X: ``log(max(X, 0.05))``, i.e. in
units of a no-command T of 1). One forward of the prompts, then seconds per fit.

With ``--readout levels`` the readout is the heads' level reading instead (``heads_steering_levels``): an
MLP to one logit per level (low 3..1, none, high 1..3; no command, placebo and named rows are "none"),
fitted by cross-entropy, whose prediction is the probability-weighted log ratio of the levels; it
reads no named value, so its named measure is left out.

Measures per command split of the eval prompts (:func:`probe_measures`): single-command consistency
(a relative command row's prediction moves the commanded way against its prompt's no-command row),
full ordering (mean of low rows < no command < mean of high rows), the median level-3 ratios, and
the share of named temperatures on target (|exp(prediction) - X| <= max(0.1, 0.25 X)).

    python -m analysis.probe --data outputs/control_data --layers 14 20 --seeds 0 1 2
    python -m analysis.probe --data outputs/control_data --readout levels

Shapes: ``R`` rows, ``L`` the longest prompt in tokens, ``H`` the hidden size.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

NAMED_FLOOR = 0.05
#: The control-data columns the probe reads.
COLUMNS = ("group_id", "split", "variant", "level", "command_split", "target_temperature", "messages")


def default_ratios() -> tuple[list[float], list[float]]:
    """The training objective's default ``(low_temperature_ratios, high_temperature_ratios)``."""
    from steerdeco.training.objective import ObjectiveArguments

    fields = ObjectiveArguments.__dataclass_fields__
    return fields["low_temperature_ratios"].default_factory(), fields["high_temperature_ratios"].default_factory()


def probe_targets(rows: Sequence[Mapping], low_ratios=None, high_ratios=None) -> np.ndarray:
    """``[R]`` the log T ratio each row's command asks for (ratios: the objective's defaults unless given);
    NaN for rows with nothing to read (a named top-p)."""
    if low_ratios is None or high_ratios is None:
        low_ratios, high_ratios = default_ratios()
    out = np.full(len(rows), np.nan)
    for i, row in enumerate(rows):
        variant, level = row["variant"], int(row.get("level") or 0)
        if variant in ("none", "placebo"):
            out[i] = 0.0
        elif variant in ("low", "high"):
            ratios = low_ratios if variant == "low" else high_ratios
            out[i] = math.log(ratios[min(level, len(ratios)) - 1])
        elif variant == "named" and row.get("target_temperature") is not None:
            out[i] = math.log(max(float(row["target_temperature"]), NAMED_FLOOR))
    return out


def probe_levels(rows: Sequence[Mapping], levels: int) -> np.ndarray:
    """``[R]`` each row's level class for a readout of ``2 * levels + 1`` classes, as the objective's steering_level
    term reads it (:func:`steerdeco.heads.level_classes`): low k -> ``levels - k``, high k -> ``levels + k`` (k
    capped at ``levels``), every other row (no command, placebo, a named value) -> ``levels``."""
    import torch

    from steerdeco.heads import level_classes
    from steerdeco.rows import signed_level

    signed = torch.tensor([signed_level(r["variant"], r.get("level")) for r in rows], dtype=torch.float32)
    return level_classes(signed, levels).numpy()


def level_values(low_ratios=None, high_ratios=None) -> np.ndarray:
    """``[2N + 1]`` the log T ratio of each level class (low N..1, none, high 1..N; the objective's default ratios
    unless given)."""
    if low_ratios is None or high_ratios is None:
        low_ratios, high_ratios = default_ratios()
    if len(low_ratios) != len(high_ratios):
        raise ValueError("a level readout needs as many low as high ratios")
    return np.log([*reversed(low_ratios), 1.0, *high_ratios])


def prompt_states(model, tokenizer, rows: Sequence[Mapping], layer: int, batch_size: int = 32, progress: bool = True):
    """``(states [R, L, H], lengths [R])``: each row's prompt (chat template, generation prompt) through
    ``model``, the output of decoder layer ``layer`` (1-based), right-padded, in the model's dtype."""
    import torch
    from tqdm.auto import tqdm

    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is None or not 1 <= layer <= len(layers):
        raise ValueError(f"--layers: {layer} is not a decoder layer of this model (it has 1..{len(layers or [])})")
    encoded = [list(tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]) for r in rows]
    lengths = torch.tensor([len(e) for e in encoded])
    states = None
    order = np.argsort(lengths.numpy(), kind="stable")
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), batch_size), desc=f"prompt states, layer {layer}", disable=not progress):
            index = order[start:start + batch_size]
            width = int(lengths[index].max())
            ids = torch.zeros(len(index), width, dtype=torch.long)
            attention = torch.zeros(len(index), width, dtype=torch.long)
            for b, i in enumerate(index):
                ids[b, :len(encoded[i])] = torch.tensor(encoded[i])
                attention[b, :len(encoded[i])] = 1
            hidden = model(input_ids=ids.to(device), attention_mask=attention.to(device), output_hidden_states=True).hidden_states[layer]
            if states is None:
                states = torch.zeros(len(rows), int(lengths.max()), hidden.shape[-1], dtype=hidden.dtype)
            for b, i in enumerate(index):
                states[i, :width] = hidden[b].cpu()
    return states, lengths


def fit_probe(states, lengths, targets: np.ndarray, train: np.ndarray, seed: int = 0, epochs: int = 20,
              learning_rate: float = 1e-3, batch_size: int = 32, width: int = 256, pool_width: int = 64,
              levels: np.ndarray | None = None, values: np.ndarray | None = None) -> np.ndarray:
    """Fit pooling + MLP on the ``train`` rows (bool ``[R]``) with a finite target; ``[R]`` predictions for every row.

    With ``levels`` (``[R]`` classes, :func:`probe_levels`) and ``values`` (``[K]`` each class's log ratio,
    :func:`level_values`) the MLP gives ``K`` logits fitted by cross-entropy on every train row, and a row's
    prediction is ``softmax(logits) @ values``; ``targets`` is then not read."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from steerdeco.heads import PromptAttentionPool

    if (levels is None) != (values is None):
        raise ValueError("a level readout needs both the rows' levels and the levels' values")
    fit_rows = np.where(train if levels is not None else train & np.isfinite(targets))[0]
    if len(fit_rows) == 0:
        raise ValueError("the probe has no training rows with a command to read (need rows of the 'train' split)")
    torch.manual_seed(seed)
    hidden = states.shape[-1]
    pool = PromptAttentionPool(hidden, pool_width)
    readout = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, 1 if levels is None else len(values)))
    params = list(pool.parameters()) + list(readout.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    mask = torch.arange(states.shape[1])[None] < lengths[:, None]
    y = torch.tensor(np.nan_to_num(targets), dtype=torch.float32)
    classes = None if levels is None else torch.as_tensor(levels, dtype=torch.long)
    value = None if values is None else torch.as_tensor(values, dtype=torch.float32)
    rng = np.random.default_rng(seed)

    def outputs(index):
        span = int(lengths[index].max())
        return readout(pool(states[index, :span].float(), mask[index, :span]))

    def predict(index):
        out = outputs(index)
        return out.squeeze(-1) if value is None else out.softmax(-1) @ value

    def loss_of(index):
        if classes is None:
            return (predict(index) - y[index]).square().mean()
        return F.cross_entropy(outputs(index), classes[index])

    for _ in range(epochs):
        order = fit_rows[rng.permutation(len(fit_rows))]
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = loss_of(torch.as_tensor(index))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return np.concatenate([predict(torch.arange(s, min(s + 128, len(targets)))).numpy()
                               for s in range(0, len(targets), 128)])


def probe_measures(rows: Sequence[Mapping], predictions: np.ndarray) -> dict:
    """``{command split: measures}`` over the eval prompts' rows (see the module docstring)."""
    none = {r["group_id"]: predictions[i] for i, r in enumerate(rows) if r["variant"] == "none"}
    out = {}
    splits = sorted({str(r["command_split"]) for r in rows if r.get("command_split") and r["split"] == "eval"})
    for split in splits:
        rel = [(i, r) for i, r in enumerate(rows) if r["split"] == "eval" and r.get("command_split") == split
               and r["variant"] in ("low", "high") and r["group_id"] in none]
        delta = {i: predictions[i] - none[r["group_id"]] for i, r in rel}
        by_group: dict[str, dict[str, list[float]]] = {}
        for i, r in rel:
            by_group.setdefault(r["group_id"], {}).setdefault(r["variant"], []).append(delta[i])
        ordered = [np.mean(d["low"]) < 0 < np.mean(d["high"]) for d in by_group.values() if "low" in d and "high" in d]
        level3 = {v: [math.exp(delta[i]) for i, r in rel if r["variant"] == v and int(r["level"]) == 3] for v in ("low", "high")}
        named = [(predictions[i], float(r["target_temperature"])) for i, r in enumerate(rows)
                 if r["split"] == "eval" and r.get("command_split") == split and r["variant"] == "named"
                 and r.get("target_temperature") is not None and math.isfinite(predictions[i])]
        out[split] = {
            "n_command_rows": len(rel),
            "single_command": float(np.mean([(delta[i] > 0) == (r["variant"] == "high") and delta[i] != 0 for i, r in rel])) if rel else None,
            "full_ordering": float(np.mean(ordered)) if ordered else None,
            "level3_ratio_low": float(np.median(level3["low"])) if level3["low"] else None,
            "level3_ratio_high": float(np.median(level3["high"])) if level3["high"] else None,
            "named_temperature_on_target": float(np.mean([abs(math.exp(p) - x) <= max(0.1, 0.25 * x) for p, x in named])) if named else None,
        }
    return out


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m analysis.probe``."""
    parser = argparse.ArgumentParser(prog="python -m analysis.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, metavar="DIR", help="built control data (its folder or control_data.jsonl)")
    parser.add_argument("--model", default="embedded", help="'embedded', 'tiny' or a local model folder (default: embedded)")
    parser.add_argument("--layers", type=int, nargs="+", default=[14], help="decoder layers to probe, 1-based (default: 14)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one fit per seed and layer (default: 0)")
    parser.add_argument("--readout", choices=("regression", "levels"), default="regression",
                        help="regression: an MLP to the commanded log ratio; levels: an MLP to one logit per level "
                        "(the heads' steering_levels; no named-value measure) (default: regression)")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training rows per fit (default: 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per forward (default: 32)")
    parser.add_argument("--out", metavar="FILE", help="also write the measures as JSON here (an existing file is not replaced)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Probe each layer with each seed and print one line per fit and command split."""
    from pathlib import Path

    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.epochs < 1 or args.batch_size < 1:
        raise SystemExit("--epochs and --batch-size must be >= 1")
    if args.out and Path(args.out).exists():
        raise SystemExit(f"--out {args.out} exists; remove it or pass another path")
    import torch

    from steerdeco.errors import ControlDataError
    from steerdeco.loading import load_base_model
    from steerdeco.rows import load_control_data

    try:
        rows = [dict(r) for r in load_control_data(args.data, required=COLUMNS)]
    except ControlDataError as error:
        raise SystemExit(f"--data: {error}") from None
    model, tokenizer = load_base_model(args.model, torch.bfloat16 if args.model == "embedded" else torch.float32)
    targets = probe_targets(rows)
    train = np.array([r["split"] == "train" for r in rows])
    levels = values = None
    if args.readout == "levels":
        values = level_values()
        levels = probe_levels(rows, (len(values) - 1) // 2)
    results = {}
    for layer in args.layers:
        try:
            states, lengths = prompt_states(model, tokenizer, rows, layer, args.batch_size)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        for seed in args.seeds:
            predictions = fit_probe(states, lengths, targets, train, seed=seed, epochs=args.epochs, levels=levels, values=values)
            if levels is not None:  # a level readout reads no named value
                predictions[np.array([r["variant"] == "named" for r in rows])] = np.nan
            measures = probe_measures(rows, predictions)
            results[f"layer {layer}, seed {seed}"] = measures
            for split, m in measures.items():
                cells = ", ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float))
                print(f"layer {layer} seed {seed} [{split} wordings] {cells}")
    if args.out:
        from steerdeco.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
