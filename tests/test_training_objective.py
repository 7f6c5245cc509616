"""steerdeco.training.objective: every term moves T and P the way the command says (tiny model)."""

import math

import pytest
import torch
from training_setup import config

from steerdeco.heads import MIN_TEMPERATURE, named_gates
from steerdeco.ranking import pairwise_ranking_loss, sequence_means
from steerdeco.rows import VARIANTS, select_split
from steerdeco.training import SteeringTrainer, evaluate_ordering
from steerdeco.training.model import MODEL_INPUTS
from steerdeco.training.objective import SteeringObjective
from steerdeco.training.synthetic import synthetic_control_rows


@pytest.mark.parametrize("space", ["linear", "log"])
def test_ranking_space_picks_what_the_margin_compares(tmp_path, train_rows, space):
    trainer = SteeringTrainer(args=config(tmp_path, ranking_space=space), train_dataset=train_rows)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    outputs = trainer.model(**{k: inputs[k] for k in MODEL_INPUTS if k in inputs})
    terms = trainer.objective.terms(outputs, inputs)
    mask = inputs["response_mask"].bool()
    values = outputs.temperature.clamp_min(MIN_TEMPERATURE).log() if space == "log" else outputs.temperature
    expected = pairwise_ranking_loss(values, mask, inputs["groups"], inputs["signed_level"], margin=0.1)
    torch.testing.assert_close(terms["ranking_temperature_loss"], expected)


def test_log_space_leaves_room_below_a_small_calibrated_temperature():
    # none at T = 0.15 and three graded low levels: a 0.1 margin per level pair needs T < 0 in linear space
    levels = torch.tensor([-3.0, -2.0, -1.0, 0.0])
    groups = torch.zeros(4, dtype=torch.long)
    mask = torch.ones(4, 1, dtype=torch.bool)
    temperature = torch.tensor([[0.15 * math.exp(-0.1 * k)] for k in (3, 2, 1, 0)])
    log_loss = pairwise_ranking_loss(temperature.log(), mask, groups, levels, margin=0.09)
    linear_loss = pairwise_ranking_loss(temperature, mask, groups, levels, margin=0.09)
    assert float(log_loss) == 0.0 and float(linear_loss) > 0.0


def test_level_ratio_and_named_value_terms_move_t_and_p_where_the_command_says(tmp_path):
    rows = select_split(synthetic_control_rows(num_prompts=8, num_eval_prompts=2), "train")
    args = config(tmp_path, max_steps=200, learning_rate=1e-2, per_device_train_batch_size=3, logging_steps=20,
                  temperature_ranking_weight=0.0, top_p_ranking_weight=0.0, placebo_weight=0.0,  # the new terms alone
                  temperature_ratio_weight=1.0, absolute_weight=1.0, top_p_absolute_weight=1.0, heads_max_temperature=8.0)
    trainer = SteeringTrainer(args=args, train_dataset=rows)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "ratio_temperature_loss" in h and "loss" in h]
    assert logs[-1]["ratio_temperature_loss"] < logs[0]["ratio_temperature_loss"]
    assert logs[-1]["absolute_top_p_loss"] < logs[0]["absolute_top_p_loss"]
    report = evaluate_ordering(trainer.autodeco_model, trainer.processing_class, rows)
    by_command = {}
    for record in report["rows"]:
        by_command.setdefault(record.get("command_id") or "none", []).append((record["temperature"], record["top_p"]))
    mean = {k: [sum(v[i] for v in values) / len(values) for i in (0, 1)] for k, values in by_command.items()}
    none_t = mean["none"][0]
    assert math.log(mean["low-2-a"][0] / none_t) < math.log(0.6)  # asked: x 0.4
    assert math.log(mean["high-2-a"][0] / none_t) > math.log(1.1)  # asked: x 1.6
    assert abs(mean["named-t"][0] - 1.6) < 0.3 and abs(mean["named-p"][1] - 0.3) < 0.15  # from T 4, P 0.9


# -- each term on its own, one head update at a time ----------------------------------------------
@pytest.fixture(scope="module")
def jittered(tmp_path_factory, train_rows):
    """A cached head-only trainer whose heads are jittered (fresh heads predict one T and P everywhere),
    and one batch of every training group."""
    args = config(tmp_path_factory.mktemp("objective"), per_device_train_batch_size=4, heads_max_temperature=8.0,
                  dft=False)  # random tiny model: DFT weights would all be about 1 / vocabulary size
    trainer = SteeringTrainer(args=args, train_dataset=train_rows)
    with torch.no_grad():
        for parameter in trainer.autodeco_model.heads.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)).to(parameter.device))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, batch


def only(term: str, args) -> SteeringObjective:
    """The objective of ``args`` with ``term`` as its only term (weight 1)."""
    objective = SteeringObjective.from_config(args)
    objective.weights = {term: 1.0}
    return objective


def row_means(trainer, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T [R], P [R])``: each row's mean over its response."""
    with torch.no_grad():
        outputs = trainer.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    mask = batch["response_mask"].bool()
    return sequence_means(outputs.temperature, mask), sequence_means(outputs.top_p, mask)


def commanded_gap(values: torch.Tensor, batch, high: str, low: str) -> float:
    """Mean of ``values`` on ``high`` rows minus on ``low`` rows."""
    variant = batch["variant"]
    return float(values[variant == VARIANTS.index(high)].mean() - values[variant == VARIANTS.index(low)].mean())


def distance_to_none(values: torch.Tensor, batch, variant_name: str, log: bool = False) -> float:
    """Mean over ``variant_name`` rows of ``values - values of their group's no-command row`` (in log if asked)."""
    values = values.log() if log else values
    none = {int(g): values[r] for r, g in enumerate(batch["groups"]) if int(batch["variant"][r]) == VARIANTS.index("none")}
    rows = [r for r in range(len(values)) if int(batch["variant"][r]) == VARIANTS.index(variant_name)]
    return float(torch.stack([values[r] - none[int(batch["groups"][r])] for r in rows]).mean())


def target_error(values: torch.Tensor, targets: torch.Tensor, log: bool = False) -> float:
    named = ~targets.isnan()
    if log:
        return float((values[named].log() - targets[named].clamp_min(0.05).log()).abs().mean())
    return float((values[named] - targets[named]).abs().mean())


# term -> (what it measures on (T, P, batch), "down" or "up": the way the command asks it to move)
MOVES = {
    "ranking_temperature_loss": (lambda t, p, b: commanded_gap(t, b, "high", "low"), "up"),
    "ranking_top_p_loss": (lambda t, p, b: commanded_gap(p, b, "high", "low"), "up"),
    "placebo_temperature_loss": (lambda t, p, b: abs(distance_to_none(t, b, "placebo")), "down"),
    "placebo_top_p_loss": (lambda t, p, b: abs(distance_to_none(p, b, "placebo")), "down"),
    "ratio_temperature_loss": (lambda t, p, b: distance_to_none(t, b, "low", log=True), "down"),
    "level_top_p_loss": (lambda t, p, b: commanded_gap(p, b, "high", "low"), "up"),
    "absolute_temperature_loss": (lambda t, p, b: target_error(t, b["target_temperature"], log=True), "down"),
    # t is each row's response-mean T: this term moves exactly that toward the named value
    "absolute_mean_temperature_loss": (lambda t, p, b: target_error(t, b["target_temperature"], log=True), "down"),
    "absolute_top_p_loss": (lambda t, p, b: target_error(p, b["target_top_p"]), "down"),
}


# small steps for the steering terms (hinges and absolute values overshoot); the random tiny model's
# next-token distributions are nearly flat, so AutoDeco's losses barely depend on T and need larger ones
LEARNING_RATES = {"autodeco_temperature_loss": 0.5, "autodeco_top_p_loss": 0.05}


@pytest.mark.parametrize("term", [*MOVES, "autodeco_temperature_loss", "autodeco_top_p_loss"])
def test_each_term_on_its_own_moves_t_and_p_the_way_the_command_says(jittered, term):
    trainer, batch = jittered
    heads = trainer.autodeco_model.heads
    saved = {k: v.clone() for k, v in heads.state_dict().items()}
    objective = only(term, trainer.args)
    optimizer = torch.optim.SGD(heads.parameters(), lr=LEARNING_RATES.get(term, 1e-3))
    try:
        before = row_means(trainer, batch)
        losses = []
        for _ in range(10):
            outputs = trainer.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
            generator = torch.Generator().manual_seed(0)  # the trainer's: CPU draws on any device
            loss, terms = objective(outputs, batch, generator=generator)
            assert set(terms) == {term} and loss.item() == pytest.approx(terms[term].item())
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after = row_means(trainer, batch)
    finally:
        heads.load_state_dict(saved)
    assert losses[-1] < losses[0]
    if term in MOVES:
        measure, way = MOVES[term]
        moved = measure(*after, batch) - measure(*before, batch)
        assert moved > 0 if way == "up" else moved < 0, (term, measure(*before, batch), measure(*after, batch))


def test_objective_is_built_once_from_the_config_with_the_autodeco_weights(tmp_path):
    args = config(tmp_path, temperature_loss_weight=0.25, top_p_loss_weight=0.5, train_heads="temperature")
    objective = SteeringObjective.from_config(args)
    assert objective.weights["autodeco_temperature_loss"] == 0.25 and "autodeco_top_p_loss" not in objective.weights
    assert not any("top_p" in term for term in objective.weights)
    assert "ratio_temperature_loss" not in objective.weights and "lm_loss" not in objective.weights  # weight 0 / head_only
    lora = SteeringObjective.from_config(config(tmp_path, training_mode="lora_joint", lm_loss_weight=0.5))
    assert lora.weights["lm_loss"] == 0.5
    assert "level_top_p_loss" not in objective.weights  # weight 0 by default
    levelled = SteeringObjective.from_config(config(tmp_path, top_p_level_weight=2.0, high_top_p_offsets=[0.5, 1.0]))
    assert levelled.weights["level_top_p_loss"] == 2.0 and levelled.high_top_p_offsets == [0.5, 1.0]
    with pytest.raises(ValueError, match="needs low_top_p_offsets and high_top_p_offsets"):
        SteeringObjective({"level_top_p_loss": 1.0}, args.autodeco_loss_config(), autodeco_rows="all", temperature_margin=0.1,
                          top_p_margin=0.1, ranking_space="log", ranking_reduction="token", low_temperature_ratios=[0.5],
                          high_temperature_ratios=[2.0], absolute_temperature_floor=0.05)
    with pytest.raises(ValueError, match="unknown loss terms"):
        SteeringObjective({"entropy_loss": 1.0}, args.autodeco_loss_config(), autodeco_rows="all", temperature_margin=0.1,
                          top_p_margin=0.1, ranking_space="log", ranking_reduction="token", low_temperature_ratios=[0.5],
                          high_temperature_ratios=[2.0], absolute_temperature_floor=0.05)


def _none_temperature(trainer, batch) -> float:
    outputs = trainer.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    keep = batch["response_mask"].bool() & (batch["variant"] == VARIANTS.index("none")).unsqueeze(1)
    return float(outputs.temperature[keep].mean()), float(outputs.anchor_temperature[keep].mean())


@pytest.mark.parametrize("mode", ["head_only", "lora_joint"])
def test_the_anchor_term_holds_rows_without_a_command_to_the_anchor_heads(tmp_path, train_rows, mode):
    from steerdeco import AutoDecoModel

    probe = SteeringTrainer(args=config(tmp_path / "probe"), train_dataset=train_rows)
    anchor = AutoDecoModel(probe.autodeco_model.base_model, probe.autodeco_model.heads_config)
    anchor.heads.load_state_dict(probe.autodeco_model.heads.state_dict())
    with torch.no_grad():
        anchor.temperature_head.mlp[-1].bias.sub_(1.5)  # the anchor samples colder without a command
    anchor.save_pretrained(tmp_path / "anchor")
    args = config(tmp_path, max_steps=40, learning_rate=1e-2, logging_steps=5, anchor_heads=str(tmp_path / "anchor"),
                  training_mode=mode, lm_loss_weight=0.0,
                  temperature_loss_weight=0.0, top_p_loss_weight=0.0, temperature_ranking_weight=0.0,
                  top_p_ranking_weight=0.0, placebo_weight=0.0, absolute_weight=0.0, anchor_weight=1.0)
    trainer = SteeringTrainer(args=args, train_dataset=train_rows)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        before, target = _none_temperature(trainer, batch)
    trainer.train()
    with torch.no_grad():
        after, _ = _none_temperature(trainer, batch)
    logs = [h["anchor_loss"] for h in trainer.state.log_history if "anchor_loss" in h and "loss" in h]
    assert logs[-1] < logs[0]
    assert abs(after - target) < 0.5 * abs(before - target)


def test_anchor_heads_with_their_own_pooling_run_once_per_cached_row(tmp_path, train_rows):
    from steerdeco import AutoDecoModel

    pooled = {"heads_context_pooling": "prompt_attention"}
    probe = SteeringTrainer(args=config(tmp_path / "probe", **pooled), train_dataset=train_rows)
    anchor = AutoDecoModel(probe.autodeco_model.base_model, probe.autodeco_model.heads_config)
    anchor.heads.load_state_dict(probe.autodeco_model.heads.state_dict())
    anchor.save_pretrained(tmp_path / "anchor")
    trainer = SteeringTrainer(args=config(tmp_path, anchor_heads=str(tmp_path / "anchor"), anchor_weight=1.0, **pooled),
                              train_dataset=train_rows)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    assert "cache_rows" in inputs and trainer.model.anchor.prompt_pool is not None
    calls = []
    handle = trainer.model.anchor.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            first, again = trainer.model(**inputs), trainer.model(**inputs)
            assert len(calls) == 1  # the second batch of the same rows reuses the kept values
            live = trainer.model(**{k: v for k, v in inputs.items() if k != "cache_rows"})
            assert len(calls) == 2
    finally:
        handle.remove()
    for name in ("anchor_temperature", "anchor_top_p"):
        assert torch.equal(getattr(first, name), getattr(again, name))
        torch.testing.assert_close(getattr(first, name), getattr(live, name))


def test_anchor_heads_with_another_context_are_refused(tmp_path, train_rows):
    from steerdeco import AutoDecoModel
    from steerdeco.config import HeadsConfig

    probe = SteeringTrainer(args=config(tmp_path / "probe"), train_dataset=train_rows)
    base = probe.autodeco_model.base_model
    AutoDecoModel(base, HeadsConfig(hidden_size=probe.autodeco_model.heads_config.hidden_size)).save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match=r"anchor_heads .*a: their context .* differs from this run's"):
        SteeringTrainer(args=config(tmp_path, anchor_heads=str(tmp_path / "a")), train_dataset=train_rows)


def test_missing_anchor_heads_are_named_before_anything_runs(tmp_path, train_rows):
    with pytest.raises(ValueError, match=r"anchor_heads .*nowhere.*anchor_heads must be a folder written by"):
        SteeringTrainer(args=config(tmp_path, anchor_heads=str(tmp_path / "nowhere")), train_dataset=train_rows)
    assert not (tmp_path / "cache").exists()  # refused before the backbone cache


def test_the_named_gate_term_opens_the_gate_of_what_each_row_names(tmp_path, train_rows):
    args = config(tmp_path, per_device_train_batch_size=4, heads_context_features=True, heads_steering_width=8,
                  heads_context_in_mlp=False, heads_context_pooling="prompt_attention", heads_context_layer=1,
                  heads_named_values=True, heads_max_temperature=8.0)
    trainer = SteeringTrainer(args=args, train_dataset=train_rows)
    assert "named_gate_loss" in trainer.objective.weights
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    named = batch["variant"] == VARIANTS.index("named")  # "no randomness" names T = 0 by its level: no gate
    names_t, names_p = named & ~batch["target_temperature"].isnan(), named & ~batch["target_top_p"].isnan()
    assert names_t.any() and names_p.any() and (~named & ~batch["target_temperature"].isnan()).any()
    objective = only("named_gate_loss", trainer.args)
    optimizer = torch.optim.Adam(trainer.autodeco_model.heads.parameters(), lr=0.05)

    def measure():
        with torch.no_grad():
            outputs = trainer.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
        t = sequence_means(outputs.temperature, batch["response_mask"].bool())
        gates = named_gates(outputs.named)
        return gates[:, 1], gates[:, 2], t

    gate_t, gate_p, before_t = measure()
    losses = []
    for _ in range(30):
        outputs = trainer.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
        loss, _ = objective(outputs, batch)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after_gate_t, after_gate_p, after_t = measure()
    assert losses[-1] < 0.5 * losses[0]
    assert float(after_gate_t[names_t].min()) > 0.5 and float(after_gate_t[~names_t].max()) < 0.5
    assert float(after_gate_p[names_p].min()) > 0.5 and float(after_gate_p[~names_p].max()) < 0.5
    assert float(gate_t.max()) < 0.01 and float(gate_p.max()) < 0.01  # fresh gates: closed
    # with the gate open, a row naming a temperature decodes nearer it (the synthetic rows name 1.6)
    targets = batch["target_temperature"][names_t].clamp_min(0.05)
    error = lambda t: float((t[names_t].log() - targets.log()).abs().mean())  # noqa: E731
    assert error(after_t) < 0.5 * error(before_t)


def test_the_steering_level_term_teaches_each_path_the_level_and_the_ranking_term_its_offset(tmp_path, train_rows):
    args = config(tmp_path, per_device_train_batch_size=4, heads_context_features=True, heads_steering_width=8,
                  heads_context_in_mlp=False, heads_context_pooling="prompt_attention", heads_context_layer=1,
                  heads_steering_levels=3, heads_max_temperature=8.0, temperature_ratio_weight=1.0)
    trainer = SteeringTrainer(args=args, train_dataset=train_rows)
    assert "steering_level_loss" in trainer.objective.weights
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    levels, variant = batch["signed_level"], batch["variant"]
    placebo = variant == VARIANTS.index("placebo")
    expected = levels.nan_to_num(0.0).long() + 3  # placebo and named rows: "none"
    assert len(set(expected.tolist())) >= 3  # low, none and high rows in the batch
    before_t, _ = row_means(trainer, batch)
    objective = SteeringObjective.from_config(args)
    objective.weights = {"steering_level_loss": 1.0, "ranking_temperature_loss": 1.0}
    optimizer = torch.optim.Adam(trainer.autodeco_model.heads.parameters(), lr=0.01)
    losses = []
    for _ in range(150):
        outputs = trainer.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
        loss, terms = objective(outputs, batch)
        losses.append(terms["steering_level_loss"].item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        outputs = trainer.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    assert losses[-1] < 0.2 * losses[0]
    picked = outputs.level_logits.argmax(-1)  # [rows, 2]: both paths read the row's level
    assert bool((picked == expected.unsqueeze(-1)).all())
    assert torch.allclose(before_t, before_t[0])  # fresh paths: every offset 0, one T for all rows
    heads = trainer.autodeco_model.heads
    with torch.no_grad():  # the offset the temperature path adds to each row's logit (log T for T << max)
        pooled = heads.pool_prompt(batch["prompt_states"], batch["prompt_mask"], batch.get("prompt_ids"))
        offset = heads.temperature_head.steering(heads.split_named(pooled)[0])
    none = {int(g): offset[r] for r, g in enumerate(batch["groups"]) if float(levels[r]) == 0 and not placebo[r]}
    for r, g in enumerate(batch["groups"]):
        if not torch.isnan(levels[r]) and float(levels[r]) != 0:
            assert (offset[r] - none[int(g)]) * levels[r] > 0  # the commanded way


def test_the_steering_level_term_reads_placebo_and_named_rows_as_no_level_and_caps_the_level():
    logits = torch.zeros(4, 2, 7)
    logits[..., 6] = 5.0  # every path says "high 3"
    inputs = {"signed_level": torch.tensor([3.0, float("nan"), float("nan"), 5.0]),
              "variant": torch.tensor([VARIANTS.index(v) for v in ("high", "placebo", "named", "high")])}
    outputs = type("Out", (), {"level_logits": logits})()
    loss = SteeringObjective._steering_level(outputs, inputs)
    high3 = torch.nn.functional.cross_entropy(logits[0], torch.tensor([6, 6]))
    none = torch.nn.functional.cross_entropy(logits[1], torch.tensor([3, 3]))
    # rows 0 and 3 (high 5 capped at 3) are "high 3"; the placebo and the named row "none"
    torch.testing.assert_close(loss, (2 * high3 + 2 * none) / 4)
