"""steerdeco.training.config: SteeringConfig, its checks and the sub-configs it builds."""

import pytest

from steerdeco.config import HeadsConfig
from steerdeco.losses import AutoDecoLossConfig
from steerdeco.training import SteeringConfig


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"training_mode": "full"}, "training_mode must be one of"),
        ({"train_heads": "neither"}, "train_heads must be one of"),
        ({"ranking_reduction": "mean"}, "ranking_reduction must be one of"),
        ({"ranking_space": "exp"}, "ranking_space must be one of"),
        ({"temperature_margin": -0.1}, "temperature_margin must be a finite number >= 0"),
        ({"placebo_weight": float("nan")}, "placebo_weight must be a finite number >= 0"),
        ({"low_top_p_offsets": [-0.4, 0.2]}, r"low_top_p_offsets must be a non-empty list of negative numbers"),
        ({"high_top_p_offsets": []}, r"high_top_p_offsets must be a non-empty list of positive numbers"),
        ({"low_temperature_ratios": [0.5, 1.2]}, "low_temperature_ratios must be < 1"),
        ({"easy_token_fraction": 1.5}, "easy_token_fraction"),
        ({"training_mode": "lora_joint", "backbone_cache": True}, "backbone_cache=True needs training_mode='head_only'"),
        ({"logit_top_k": 3}, "logit_top_k must be 0"),
        ({"logit_top_k": 0}, "the backbone cache stores compressed logits"),
        ({"max_response_tokens": 0}, "max_response_tokens must be >= 1"),
        ({"train_split": "eval"}, "train_split and eval_split must differ"),
        ({"training_mode": "lora_joint", "lora_r": 0}, "lora_r must be >= 1"),
        ({"training_mode": "lora_joint", "lora_target_modules": []}, "lora_target_modules"),
        ({"push_to_hub": True}, "push_to_hub is not supported"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be False"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        SteeringConfig(output_dir=str(tmp_path), **overrides)


def test_config_defaults_suit_the_trainer(tmp_path):
    args = SteeringConfig(output_dir=str(tmp_path))
    assert args.use_backbone_cache and args.training_mode == "head_only"
    assert args.dataset_kwargs == {"skip_prepare_dataset": True}
    checkpointing = getattr(args, "activation_checkpointing", args.gradient_checkpointing)  # transformers 5.17 has gradient_checkpointing only
    assert not args.bf16 and not checkpointing and not args.remove_unused_columns
    assert args.report_to in ([], "none", ["none"])
    assert not SteeringConfig(output_dir=str(tmp_path), training_mode="lora_joint").use_backbone_cache


def test_heads_defaults_are_the_heads_configs_and_heads_config_builds_them(tmp_path):
    args = SteeringConfig(output_dir=str(tmp_path))
    built = args.heads_config(hidden_size=64)
    reference = HeadsConfig(hidden_size=64, base_model="embedded")
    assert built == reference  # one set of defaults: the heads a bare AutoDecoModel gets
    custom = SteeringConfig(output_dir=str(tmp_path), heads_mlp_width=32, heads_context_features=True,
                            heads_steering_width=8).heads_config(hidden_size=16)
    assert (custom.mlp_width, custom.context_features, custom.steering_width, custom.hidden_size) == (32, True, 8, 16)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"heads_mlp_width": 0}, "heads_mlp_width must be a positive integer"),
        ({"heads_mlp_dropout": 1.5}, r"heads_mlp_dropout must be a number in \[0, 1\), got 1.5"),
        ({"heads_max_temperature": -1.0}, "heads_max_temperature must be a positive number"),
        ({"heads_steering_width": 8}, "heads_steering_width > 0 needs context_features=True"),
        ({"heads_context_in_mlp": False}, "heads_context_in_mlp=False needs a steering path"),
        ({"top_p_steepness": 0.0}, "top_p_steepness must be > 0"),
    ],
)
def test_sub_configs_are_validated_once_and_errors_name_the_field(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        SteeringConfig(output_dir=str(tmp_path), **overrides)


def test_autodeco_loss_config_carries_the_autodeco_settings_and_weights(tmp_path):
    args = SteeringConfig(output_dir=str(tmp_path), easy_token_fraction=0.2, dft=False, top_p_steepness=10.0,
                          temperature_loss_weight=0.3, top_p_loss_weight=0.7)
    assert args.autodeco_loss_config() == AutoDecoLossConfig(
        easy_token_fraction=0.2, dft=False, steepness=10.0, temperature_weight=0.3, top_p_weight=0.7
    )
