"""steerdeco.loading: the one loader of base model, heads and adapter checks the heads every time."""

import pytest
import torch

from steerdeco import AutoDecoModel, HeadsConfig
from steerdeco.loading import load_base_model, load_trained_model
from steerdeco.testing import tiny_model_and_tokenizer


def test_base_models_are_embedded_tiny_or_a_local_folder(tmp_path):
    model, tokenizer = load_base_model("tiny", torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16 and tokenizer.pad_token_id is not None
    with pytest.raises(ValueError, match="is not 'embedded', 'tiny' or a local model folder"):
        load_base_model("some/hub-model")


def test_trained_heads_load_onto_their_base_model_and_are_refused_on_another(tmp_path):
    base, _ = tiny_model_and_tokenizer()
    heads = AutoDecoModel(base, HeadsConfig(hidden_size=64, mlp_width=8))
    with torch.no_grad():
        heads.heads.temperature_head.mlp[-1].bias.fill_(0.5)
    heads.save_pretrained(tmp_path / "run")
    loaded = load_trained_model(tmp_path / "run", tiny_model_and_tokenizer()[0])
    assert loaded.heads_config == heads.heads_config and not any(p.requires_grad for p in loaded.base_model.parameters())
    torch.testing.assert_close(loaded.heads.state_dict(), heads.heads.state_dict())
    wider, _ = tiny_model_and_tokenizer(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"--heads .* expect hidden size 64 but the base model .* has hidden size 32"):
        load_trained_model(tmp_path / "run", wider, source=f"--heads {tmp_path / 'run'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trained_model(tmp_path / "nothing", base)
