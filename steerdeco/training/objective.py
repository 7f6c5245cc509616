"""The steering objective: its settings (fields of ``SteeringConfig``) and the one object that computes it.

The objective is a weighted sum of named terms (:data:`LOSS_TERMS`, like trl's ``loss_type`` +
``loss_weights``)::

    temperature_loss_weight * autodeco_T + top_p_loss_weight * autodeco_P
    + temperature_ranking_weight * rank_T + top_p_ranking_weight * rank_P
    + placebo_weight * (placebo_T + placebo_P)
    + temperature_ratio_weight * ratio_T            (commanded rows: log T_cmd = log T_none + log ratio(level))
    + top_p_level_weight * level_P                  (commanded rows: logit P_cmd = logit P_none + offset(level))
    + absolute_weight * absolute_T                  (rows naming a temperature X: log T toward log max(X, floor))
    + absolute_mean_weight * absolute_mean_T        (the same rows: log of the response-mean T toward it)
    + top_p_absolute_weight * absolute_P            (rows naming a top-p X: P toward X)
    + named_gate_weight * named_gate                (heads with named_values: the gates' softmax says what
                                                     each row names: nothing, a temperature or a top-p)
    + steering_level_weight * steering_level        (heads with steering_levels: each steering path's level
                                                     logits say the row's level: low 3..1, none, high 1..3;
                                                     a command naming a value is 'none')
    + anchor_weight * anchor                        (with anchor_heads: rows without a command keep their T, P)
    + lm_loss_weight * lm (lora_joint only)

Terms of a head that is not trained (``train_heads``) are left out. :class:`ObjectiveArguments`
holds the settings as config fields; :meth:`SteeringObjective.from_config` builds the objective
from them once, and the trainer calls it on every batch. The terms themselves are the pure
functions of :mod:`steerdeco.losses` (AutoDeco) and :mod:`steerdeco.ranking` (steering).

Shapes: ``R`` rows (variants), ``N`` response positions (padded), ``K`` real response positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..heads import MIN_TEMPERATURE, level_classes, named_gate_logits
from ..losses import AutoDecoLossConfig, autodeco_losses
from ..ranking import (
    REDUCTIONS,
    absolute_target_loss,
    level_log_ratios,
    level_offsets,
    pairwise_ranking_loss,
    placebo_loss,
    relative_target_loss,
    sequence_means,
)
from ..rows import VARIANTS

AUTODECO_ROWS = ("uncommanded", "all")
RANKING_SPACES = ("linear", "log")
LOSS_TERMS = (
    "autodeco_temperature_loss",
    "autodeco_top_p_loss",
    "ranking_temperature_loss",
    "ranking_top_p_loss",
    "placebo_temperature_loss",
    "placebo_top_p_loss",
    "ratio_temperature_loss",
    "level_top_p_loss",
    "absolute_temperature_loss",
    "absolute_mean_temperature_loss",
    "absolute_top_p_loss",
    "named_gate_loss",
    "steering_level_loss",
    "anchor_loss",
    "lm_loss",
)
#: The weights of the steering terms; all 0 trains AutoDeco's heads alone (the demo's reference heads).
STEERING_WEIGHT_FIELDS = (
    "temperature_ranking_weight",
    "top_p_ranking_weight",
    "placebo_weight",
    "absolute_weight",
    "absolute_mean_weight",
    "temperature_ratio_weight",
    "top_p_level_weight",
    "top_p_absolute_weight",
    "named_gate_weight",
    "steering_level_weight",
)
WEIGHT_FIELDS = (
    "temperature_loss_weight",
    "top_p_loss_weight",
    *STEERING_WEIGHT_FIELDS,
    "anchor_weight",
    "lm_loss_weight",
    "temperature_margin",
    "top_p_margin",
)


@dataclass
class ObjectiveArguments:
    """The objective's fields of :class:`~steerdeco.training.SteeringConfig` (see the module docstring)."""

    # -- AutoDeco objective ---------------------------------------------------------------------
    temperature_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of AutoDeco's temperature loss (CE of logits / T)."}
    )
    top_p_loss_weight: float = field(default=1.0, metadata={"help": "Weight of AutoDeco's soft top-p loss."})
    easy_token_fraction: float = field(
        default=0.6, metadata={"help": "Share of easy positions (base argmax == target) dropped from the T loss."}
    )
    dft: bool = field(default=True, metadata={"help": "Weight AutoDeco's losses by the base target probability."})
    top_p_steepness: float = field(default=30.0, metadata={"help": "Steepness of the soft top-p mask."})
    autodeco_rows: str = field(
        default="uncommanded",
        metadata={
            "help": "Rows the AutoDeco losses see: 'uncommanded' (no-command and placebo variants, whose response "
            "is the model's own) or 'all' variants.",
            "choices": list(AUTODECO_ROWS),
        },
    )

    # -- steering objective ---------------------------------------------------------------------
    temperature_ranking_weight: float = field(
        default=1.0, metadata={"help": "Weight of the pairwise ranking loss on T (low < none < high, by level)."}
    )
    top_p_ranking_weight: float = field(default=1.0, metadata={"help": "Weight of the pairwise ranking loss on P."})
    temperature_margin: float = field(
        default=0.1,
        metadata={
            "help": "Margin by which each higher-level variant's T must exceed the lower one's (in log T with "
            "ranking_space='log': 0.1 is a ratio of about 1.105)."
        },
    )
    top_p_margin: float = field(default=0.05, metadata={"help": "Margin of the ranking loss on P."})
    ranking_reduction: str = field(
        default="token",
        metadata={
            "help": "Compare variants position by position ('token') or on response means ('sequence'); also "
            "used by the placebo and absolute-target terms.",
            "choices": list(REDUCTIONS),
        },
    )
    ranking_space: str = field(
        default="log",
        metadata={
            "help": "Compare variants on the values themselves ('linear': a margin is an absolute difference) or on "
            "log T and logit P ('log': a margin on T is a ratio, log(T_high / T_low) >= margin; on P a step in "
            "log-odds, which leaves room above a P near 1). 'log' keeps the ranking satisfiable when the calibrated T "
            "is small and the graded levels need room below it.",
            "choices": list(RANKING_SPACES),
        },
    )
    temperature_ratio_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the level-ratio term: every low/high row's log T is regressed toward its group's "
            "no-command log T plus log(ratio of its level) (low_temperature_ratios / high_temperature_ratios), token "
            "by token. 0: off (ranking only)."
        },
    )
    low_temperature_ratios: list[float] = field(
        default_factory=lambda: [0.7, 0.4, 0.05],
        metadata={"help": "T ratio (command / no command) asked of low levels 1, 2, 3, ... by the level-ratio term."},
    )
    high_temperature_ratios: list[float] = field(
        default_factory=lambda: [1.4, 1.9, 2.6],
        metadata={"help": "T ratio asked of high levels 1, 2, 3, ... by the level-ratio term."},
    )
    top_p_level_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the top-p level term: every low/high row's logit P is regressed toward its group's "
            "no-command logit P plus the offset of its level (low_top_p_offsets / high_top_p_offsets), token by token. "
            "Sizes the top-p steps, which the ranking only bounds from below: P has less room above the no-command P "
            "than below it, so without this a high command read as low moves P further down than a high one read "
            "right moves it up. 0: off (ranking only)."
        },
    )
    low_top_p_offsets: list[float] = field(
        default_factory=lambda: [-0.4, -0.8, -1.2],
        metadata={"help": "Offset in logit P (command minus no command) asked of low levels 1, 2, 3, ... by the top-p level term."},
    )
    high_top_p_offsets: list[float] = field(
        default_factory=lambda: [0.6, 1.2, 1.8],
        metadata={"help": "Offset in logit P asked of high levels 1, 2, 3, ... by the top-p level term."},
    )
    placebo_weight: float = field(
        default=0.1,
        metadata={
            "help": "Weight of |T_placebo - T_none| + |P_placebo - P_none|. Kept small: at 1.0 this per-token pull "
            "toward invariance to any instruction outweighs the ranking and the heads stop telling commands apart."
        },
    )
    absolute_weight: float = field(
        default=0.1,
        metadata={
            "help": "Weight of (log T - log max(target, absolute_temperature_floor))^2 for commands naming a target "
            "temperature."
        },
    )
    absolute_mean_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of (log mean T - log max(target, absolute_temperature_floor))^2 over the response of each "
            "row naming a temperature: the response-mean T, which a user reads and the named-value measure scores. "
            "The absolute_weight term regresses each token's log T, whose mean in T lies above the target wherever T "
            "varies along the response. 0: off."
        },
    )
    absolute_temperature_floor: float = field(
        default=0.05,
        metadata={"help": "A named temperature below this (0: 'no randomness') is asked as this value in log space."},
    )
    top_p_absolute_weight: float = field(
        default=0.0, metadata={"help": "Weight of (P - target)^2 for commands naming a top-p value."}
    )
    named_gate_weight: float = field(
        default=1.0,
        metadata={
            "help": "Heads with named_values: weight of the cross-entropy of the named-value gates (one softmax over "
            "'names nothing', 'names a temperature', 'names a top-p') against what each row names."
        },
    )
    steering_level_weight: float = field(
        default=1.0,
        metadata={
            "help": "Heads with steering_levels: weight of the cross-entropy of each steering path's level logits "
            "against the row's level (low k, high k, or 'none': no command, a placebo or a command naming a value)."
        },
    )

    anchor_weight: float = field(
        default=1.0,
        metadata={
            "help": "With anchor_heads: weight of (log T - log T_anchor)^2 + (logit P - logit P_anchor)^2 at every "
            "response position of the rows without a randomness command (no command, placebo)."
        },
    )
    lm_loss_weight: float = field(
        default=1.0, metadata={"help": "lora_joint: weight of the language-modelling loss on the responses."}
    )

    def autodeco_loss_config(self) -> AutoDecoLossConfig:
        """The AutoDeco losses' settings and weights, validated by :class:`~steerdeco.losses.AutoDecoLossConfig`."""
        return AutoDecoLossConfig(
            easy_token_fraction=self.easy_token_fraction,
            dft=self.dft,
            steepness=self.top_p_steepness,
            temperature_weight=self.temperature_loss_weight,
            top_p_weight=self.top_p_loss_weight,
        )

    def _check_objective_fields(self) -> None:
        """Refuse objective settings that are out of range; each message names the field."""
        for name, options in (
            ("autodeco_rows", AUTODECO_ROWS),
            ("ranking_reduction", REDUCTIONS),
            ("ranking_space", RANKING_SPACES),
        ):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {list(options)}, got {getattr(self, name)!r}")
        for name in WEIGHT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("low_temperature_ratios", "high_temperature_ratios"):
            ratios = getattr(self, name)
            if not ratios or not all(isinstance(r, int | float) and math.isfinite(r) and r > 0 for r in ratios):
                raise ValueError(f"{name} must be a non-empty list of positive numbers, got {ratios!r}")
        if not all(r < 1 for r in self.low_temperature_ratios) or not all(r > 1 for r in self.high_temperature_ratios):
            raise ValueError(
                f"low_temperature_ratios must be < 1 and high_temperature_ratios > 1, got {self.low_temperature_ratios} "
                f"and {self.high_temperature_ratios}"
            )
        for name, sign in (("low_top_p_offsets", -1), ("high_top_p_offsets", 1)):
            offsets = getattr(self, name)
            if not offsets or not all(isinstance(o, int | float) and math.isfinite(o) and o * sign > 0 for o in offsets):
                raise ValueError(
                    f"{name} must be a non-empty list of {'negative' if sign < 0 else 'positive'} numbers "
                    f"(steps in logit P), got {offsets!r}"
                )
        if not self.absolute_temperature_floor > 0:
            raise ValueError(f"absolute_temperature_floor must be > 0, got {self.absolute_temperature_floor}")
        try:
            self.autodeco_loss_config()
        except ValueError as error:
            raise ValueError(str(error).replace("steepness", "top_p_steepness")) from None  # the field's name here


class SteeringObjective:
    """The weighted sum of the active loss terms, with every setting it needs (built once per run).

    Args:
        weights: ``{term: weight}`` of the active terms (names from :data:`LOSS_TERMS`); a term not
            named is neither computed nor logged.
        autodeco: settings of AutoDeco's temperature and top-p losses.
        autodeco_rows: ``"uncommanded"`` (AutoDeco losses on the no-command and placebo rows) or ``"all"``.
        temperature_margin, top_p_margin: ranking margins (in the space ``ranking_space`` names).
        ranking_space: ``"log"`` (rank log T and logit P) or ``"linear"`` (T and P themselves).
        ranking_reduction: ``"token"`` or ``"sequence"``; also used by the placebo and target terms.
        low_temperature_ratios, high_temperature_ratios: T ratio asked of levels 1, 2, 3, ... by the
            level-ratio term.
        low_top_p_offsets, high_top_p_offsets: step in logit P asked of levels 1, 2, 3, ... by the top-p
            level term (default: none; the term then needs them).
        absolute_temperature_floor: named temperatures below it are asked as it, in log space.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        autodeco: AutoDecoLossConfig,
        *,
        autodeco_rows: str,
        temperature_margin: float,
        top_p_margin: float,
        ranking_space: str,
        ranking_reduction: str,
        low_temperature_ratios: Sequence[float],
        high_temperature_ratios: Sequence[float],
        absolute_temperature_floor: float,
        low_top_p_offsets: Sequence[float] = (),
        high_top_p_offsets: Sequence[float] = (),
    ):
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; the terms are {list(LOSS_TERMS)}")
        self.weights = dict(weights)
        self.autodeco = autodeco
        self.autodeco_rows = autodeco_rows
        self.margins = {"temperature": temperature_margin, "top_p": top_p_margin}
        self.ranking_space = ranking_space
        self.reduction = ranking_reduction
        self.low_temperature_ratios = list(low_temperature_ratios)
        self.high_temperature_ratios = list(high_temperature_ratios)
        self.absolute_temperature_floor = absolute_temperature_floor
        self.low_top_p_offsets = list(low_top_p_offsets)
        self.high_top_p_offsets = list(high_top_p_offsets)
        if "level_top_p_loss" in self.weights and not (self.low_top_p_offsets and self.high_top_p_offsets):
            raise ValueError("the level_top_p_loss term needs low_top_p_offsets and high_top_p_offsets")

    @classmethod
    def from_config(cls, args) -> SteeringObjective:
        """The objective a :class:`~steerdeco.training.SteeringConfig` describes: the terms of the trained
        heads (``train_heads``) with their weights; the ratio and top-p target terms only when weighted;
        the language-modelling term only for ``lora_joint``."""
        autodeco = args.autodeco_loss_config()
        train_t = args.train_heads in ("both", "temperature")
        train_p = args.train_heads in ("both", "top_p")
        weights = {
            "autodeco_temperature_loss": autodeco.temperature_weight if train_t else None,
            "autodeco_top_p_loss": autodeco.top_p_weight if train_p else None,
            "ranking_temperature_loss": args.temperature_ranking_weight if train_t else None,
            "ranking_top_p_loss": args.top_p_ranking_weight if train_p else None,
            "placebo_temperature_loss": args.placebo_weight if train_t else None,
            "placebo_top_p_loss": args.placebo_weight if train_p else None,
            "ratio_temperature_loss": args.temperature_ratio_weight if train_t and args.temperature_ratio_weight else None,
            "level_top_p_loss": args.top_p_level_weight if train_p and args.top_p_level_weight else None,
            "absolute_temperature_loss": args.absolute_weight if train_t else None,
            "absolute_mean_temperature_loss": args.absolute_mean_weight if train_t and args.absolute_mean_weight else None,
            "absolute_top_p_loss": args.top_p_absolute_weight if train_p and args.top_p_absolute_weight else None,
            "named_gate_loss": args.named_gate_weight
            if getattr(args, "heads_named_values", False) and args.named_gate_weight else None,
            "steering_level_loss": args.steering_level_weight
            if getattr(args, "heads_steering_levels", 0) and args.steering_level_weight else None,
            "anchor_loss": args.anchor_weight if getattr(args, "anchor_heads", None) and args.anchor_weight else None,
            "lm_loss": args.lm_loss_weight if args.training_mode == "lora_joint" else None,
        }
        return cls(
            {name: weight for name, weight in weights.items() if weight is not None},
            autodeco,
            autodeco_rows=args.autodeco_rows,
            temperature_margin=args.temperature_margin,
            top_p_margin=args.top_p_margin,
            ranking_space=args.ranking_space,
            ranking_reduction=args.ranking_reduction,
            low_temperature_ratios=args.low_temperature_ratios,
            high_temperature_ratios=args.high_temperature_ratios,
            absolute_temperature_floor=args.absolute_temperature_floor,
            low_top_p_offsets=args.low_top_p_offsets,
            high_top_p_offsets=args.high_top_p_offsets,
        )

    def _ranked(self, quantity: str, values: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
        """``[R, N]`` values in the ranking space: T, P, log T or logit P."""
        if self.ranking_space == "linear":
            return values
        return log_t if quantity == "temperature" else torch.logit(values, eps=1e-4)

    @staticmethod
    def _anchor(outputs, mask: torch.Tensor, rows: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
        """Mean squared distance in log T and logit P to the anchor heads' values over ``rows``' positions."""
        if outputs.anchor_temperature is None:
            raise ValueError("the anchor term needs the anchor heads' values (SteeringModel with anchor heads)")
        keep = mask & rows.unsqueeze(1)
        if not bool(keep.any()):
            return log_t.sum() * 0
        anchor_log_t = outputs.anchor_temperature.clamp_min(MIN_TEMPERATURE).log()
        t_term = (log_t - anchor_log_t)[keep].square().mean()
        p_term = (torch.logit(outputs.top_p, eps=1e-4) - torch.logit(outputs.anchor_top_p, eps=1e-4))[keep].square().mean()
        return t_term + p_term

    @staticmethod
    def _named_gate(outputs, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the gates' softmax (:func:`~steerdeco.heads.named_gate_logits` of ``outputs.named``) against
        what each row names: nothing, a temperature or a top-p value (a ``named`` row's finite ``target_*``). A
        level's target ("no randomness": T = 0) is no named value: those rows keep the steering path."""
        if outputs.named is None:
            raise ValueError("the named_gate term needs heads with named_values (SteeringOutput.named is None)")
        names = torch.zeros(outputs.named.shape[0], dtype=torch.long, device=outputs.named.device)
        named = inputs["variant"] == VARIANTS.index("named")  # "no randomness" (T = 0 by level) stays with the steering path
        names[named & torch.isfinite(inputs["target_top_p"])] = 2
        names[named & torch.isfinite(inputs["target_temperature"])] = 1
        return F.cross_entropy(named_gate_logits(outputs.named), names)

    @staticmethod
    def _steering_level(outputs, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of each steering path's level logits (``outputs.level_logits [R, 2, 2N + 1]``) against the
        row's level: low k -> ``N - k``, high k -> ``N + k`` (k capped at N), every other row -> ``N`` ("none"):
        no command, a placebo, and a command naming a value, which the named-value path reads instead."""
        if outputs.level_logits is None:
            raise ValueError("the steering_level term needs heads with steering_levels (SteeringOutput.level_logits is None)")
        logits = outputs.level_logits.float()
        classes = level_classes(inputs["signed_level"], (logits.shape[-1] - 1) // 2)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), classes.repeat_interleave(logits.shape[1]))

    def terms(self, outputs, inputs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Every active term, unweighted, for one batch.

        Args:
            outputs: the :class:`~steerdeco.training.model.SteeringOutput` of the batch: ``temperature``,
                ``top_p [R, N]``, ``slots`` (``K`` positions), ``lm_loss``.
            inputs: the collator's batch: ``response_mask [R, N]``, ``groups``, ``signed_level``,
                ``variant [R]``, ``target_temperature``/``target_top_p [R]``.
            generator: random source of AutoDeco's easy-token draw.

        Returns:
            ``{term: scalar}`` for the terms of :attr:`weights`.
        """
        weights, reduction = self.weights, self.reduction
        mask = inputs["response_mask"].bool()
        temperature, top_p = outputs.temperature, outputs.top_p
        groups, levels, variant = inputs["groups"], inputs["signed_level"], inputs["variant"]
        is_none = variant == VARIANTS.index("none")
        is_placebo = variant == VARIANTS.index("placebo")
        terms: dict[str, torch.Tensor] = {}
        if "autodeco_temperature_loss" in weights or "autodeco_top_p_loss" in weights:
            rows = (is_none | is_placebo) if self.autodeco_rows == "uncommanded" else torch.ones_like(is_none)
            keep = rows.unsqueeze(1).expand_as(mask)[mask]
            t_loss, p_loss = autodeco_losses(
                outputs.slots.select(keep), temperature[mask][keep], top_p[mask][keep], self.autodeco, generator=generator
            )
            if "autodeco_temperature_loss" in weights:
                terms["autodeco_temperature_loss"] = t_loss
            if "autodeco_top_p_loss" in weights:
                terms["autodeco_top_p_loss"] = p_loss
        log_t = temperature.clamp_min(MIN_TEMPERATURE).log()
        for quantity, values in (("temperature", temperature), ("top_p", top_p)):
            if f"ranking_{quantity}_loss" in weights:
                terms[f"ranking_{quantity}_loss"] = pairwise_ranking_loss(
                    self._ranked(quantity, values, log_t), mask, groups, levels, margin=self.margins[quantity],
                    reduction=reduction,
                )
            if f"placebo_{quantity}_loss" in weights:
                terms[f"placebo_{quantity}_loss"] = placebo_loss(values, mask, groups, is_placebo, is_none, reduction=reduction)
        if "ratio_temperature_loss" in weights:
            offsets = level_log_ratios(levels, self.low_temperature_ratios, self.high_temperature_ratios)
            terms["ratio_temperature_loss"] = relative_target_loss(log_t, mask, groups, is_none, offsets, reduction=reduction)
        if "level_top_p_loss" in weights:
            offsets = level_offsets(levels, self.low_top_p_offsets, self.high_top_p_offsets)
            terms["level_top_p_loss"] = relative_target_loss(
                torch.logit(top_p, eps=1e-4), mask, groups, is_none, offsets, reduction=reduction)
        if "absolute_temperature_loss" in weights or "absolute_mean_temperature_loss" in weights:
            named_log_t = inputs["target_temperature"].clamp_min(self.absolute_temperature_floor).log()
        if "absolute_temperature_loss" in weights:
            terms["absolute_temperature_loss"] = absolute_target_loss(log_t, mask, named_log_t, reduction=reduction)
        if "absolute_mean_temperature_loss" in weights:  # the response-mean T, one value per row
            mean_t = sequence_means(temperature, mask).clamp_min(MIN_TEMPERATURE).unsqueeze(-1)
            terms["absolute_mean_temperature_loss"] = absolute_target_loss(
                mean_t.log(), mask.any(-1, keepdim=True), named_log_t, reduction="token")
        if "absolute_top_p_loss" in weights:
            terms["absolute_top_p_loss"] = absolute_target_loss(top_p, mask, inputs["target_top_p"], reduction=reduction)
        if "named_gate_loss" in weights:
            terms["named_gate_loss"] = self._named_gate(outputs, inputs)
        if "steering_level_loss" in weights:
            terms["steering_level_loss"] = self._steering_level(outputs, inputs)
        if "anchor_loss" in weights:
            terms["anchor_loss"] = self._anchor(outputs, mask, is_none | is_placebo, log_t)
        if "lm_loss" in weights:
            terms["lm_loss"] = outputs.lm_loss
        return terms

    def __call__(
        self, outputs, inputs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, terms)``: the weighted sum (a scalar) and the unweighted terms of :meth:`terms`."""
        terms = self.terms(outputs, inputs, generator)
        loss = sum(self.weights[name] * term for name, term in terms.items())
        return loss, terms
