"""``python -m analysis.sample``: one prompt under commands of the user's own wording, on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from analysis.sample import format_results, main, sample_rows, try_commands
from steerdeco import AutoDecoModel
from steerdeco.testing import jitter_heads, save_tiny_model
from steerdeco.training import load_base_model

PROMPT = "Write a short poem about the sea."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny model folder and three heads for it: jittered, 'cold' (T at its floor) and 'hot' (T at its ceiling)."""
    root = tmp_path_factory.mktemp("sample")
    save_tiny_model(root / "model")
    base, _ = load_base_model(str(root / "model"))
    jitter_heads(AutoDecoModel(base)).save_pretrained(root / "heads")
    for name, bias in (("cold", -30.0), ("hot", 30.0)):
        heads = AutoDecoModel(base)
        with torch.no_grad():
            heads.heads.temperature_head.mlp[-1].bias.fill_(bias)
        heads.save_pretrained(root / name)
    return root


def loaded(folders, name):
    from steerdeco.loading import load_trained_model

    base, tokenizer = load_base_model(str(folders / "model"))
    tokenizer.padding_side = "left"
    return load_trained_model(folders / name, base).eval(), tokenizer


def test_rows_hold_the_prompt_alone_first_then_each_command_where_the_placement_puts_it():
    rows = sample_rows(PROMPT, ["be wild", "no randomness"], "before")
    assert [r["command"] for r in rows] == [None, "be wild", "no randomness"]
    assert rows[0]["messages"] == [{"role": "user", "content": PROMPT}] and rows[0]["variant"] == "none"
    assert rows[1]["messages"][-1]["content"] == "be wild\n\n" + PROMPT
    assert sample_rows(PROMPT, ["be wild"], "after")[1]["messages"][-1]["content"] == PROMPT + "\n\nbe wild"
    assert sample_rows(PROMPT, ["be wild"], "system")[1]["messages"][0] == {"role": "system", "content": "be wild"}
    with pytest.raises(ValueError, match="--prompt"):
        sample_rows("  ", ["be wild"], "before")
    with pytest.raises(ValueError, match="--command ''"):
        sample_rows(PROMPT, [""], "before")


def test_heads_at_the_temperature_floor_write_one_text_under_every_seed_and_at_the_ceiling_do_not(folders):
    rows = sample_rows(PROMPT, ["be wild"], "before")
    cold = try_commands(*loaded(folders, "cold"), rows, seeds=[0, 1, 2], max_new_tokens=8)
    hot = try_commands(*loaded(folders, "hot"), rows, seeds=[0, 1, 2], max_new_tokens=8)
    assert [len(r["samples"]) for r in cold] == [3, 3]
    assert all(r["identical"] for r in cold)  # below the greedy bound every seed decodes greedily
    assert not all(r["identical"] for r in hot)
    assert cold[0]["ratio"] == pytest.approx(1.0) and hot[0]["ratio"] == pytest.approx(1.0)
    assert cold[0]["temperature"] < 0.01 < 1.0 < hot[0]["temperature"]
    assert all(s["temperature"] > 1.0 for r in hot for s in r["samples"])
    alone = try_commands(*loaded(folders, "hot"), rows[:1], seeds=[2], max_new_tokens=8)
    assert alone[0]["samples"][0] == hot[0]["samples"][2]  # seeded, whatever else was asked for
    lines = format_results(hot)
    assert lines[0].startswith("(no command): teacher-forced T ") and any(line.startswith("'be wild': ") for line in lines)
    assert "identical" in format_results(cold)[0]


def test_main_prints_every_command_and_refuses_bad_flags_in_one_line(folders, capsys):
    results = main(["--heads", str(folders / "heads"), "--prompt", PROMPT, "--command", "be wild",
                    "--command", "Use a temperature of 0.3.", "--seeds", "0", "1", "--max-new-tokens", "4"])
    printed = capsys.readouterr().out
    assert [r["command"] for r in results] == [None, "be wild", "Use a temperature of 0.3."]
    assert "(no command): " in printed and "'Use a temperature of 0.3.': " in printed and printed.count("  seed 1: ") == 3
    with pytest.raises(SystemExit, match="--max-new-tokens must be >= 1"):
        main(["--heads", str(folders / "heads"), "--prompt", PROMPT, "--max-new-tokens", "0"])
    with pytest.raises(SystemExit, match="--seeds must differ"):
        main(["--heads", str(folders / "heads"), "--prompt", PROMPT, "--seeds", "1", "1"])
    with pytest.raises(SystemExit, match=r"--heads .*missing.*no such folder"):
        main(["--heads", str(folders / "missing"), "--prompt", PROMPT])
