"""``python -m analysis.wordings``: wordings of the user's own scored on held-out prompts (tiny random model)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.wordings import (
    format_measures,
    held_out_prompts,
    main,
    read_wordings,
    wording_measures,
    wording_rows,
)
from steerdeco import AutoDecoModel
from steerdeco.testing import save_tiny_model
from steerdeco.training import load_base_model
from steerdeco.training.synthetic import synthetic_control_rows

WORDINGS = """\
low: [Keep it plain.]
high: [Surprise me., Go wild.]
no_randomness: [Always take the top choice.]
named_temperature:
  - {command: Set your temperature to 0.0., value: 0}
  - {command: Use temperature 1.5., value: 1.5}
named_top_p: [{command: Use top-p 0.5., value: 0.5}]
"""


def write(tmp_path, text, name="wordings.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_wordings_file_is_read_and_every_mistake_is_named(tmp_path):
    wordings = read_wordings(write(tmp_path, WORDINGS))
    assert [w["command"] for w in wordings["high"]] == ["Surprise me.", "Go wild."]
    assert wordings["named_temperature"][1] == {"command": "Use temperature 1.5.", "value": 1.5}
    assert wordings["low"][0]["value"] is None
    cases = {
        "loud: [x]\n": r"unknown key\(s\) loud",
        "low: Keep it plain.\n": "low must be a list",
        "high: [Go wild., '  ']\n": r"high\[1\]: expected a non-empty command text",
        "named_temperature: [{command: Use T 3., value: 3}]\n": r"named_temperature\[0\]: value must be a number in \[0, 2\]",
        "named_top_p: [{command: Use top-p 0.5.}]\n": r"named_top_p\[0\]: expected \{command: TEXT, value: NUMBER\}",
        "low: []\n": "no wordings",
        "- Keep it plain.\n": "expected a mapping",
    }
    for i, (text, message) in enumerate(cases.items()):
        with pytest.raises(ValueError, match=message) as caught:
            read_wordings(write(tmp_path, text, f"bad{i}.yaml"))
        assert f"bad{i}.yaml" in str(caught.value)  # the file is named


def test_every_prompt_gets_its_own_row_then_each_wording_with_the_placements_taking_turns():
    rows = [dict(r) for r in synthetic_control_rows(num_prompts=4, num_eval_prompts=2)]
    prompts = held_out_prompts(rows)
    assert len(prompts) == 2 and all(p["split"] == "eval" and p["variant"] == "none" for p in prompts)
    assert len(held_out_prompts(rows, max_prompts=1)) == 1
    wordings = {"low": [{"command": "Keep it plain.", "value": None}], "high": [{"command": "Go wild.", "value": None}]}
    out = wording_rows(prompts, wordings)
    assert [r["kind"] for r in out] == ["none", "low", "high"] * 2
    assert [r["placement"] for r in out if r["command"]] == ["before", "after", "after", "system"]
    assert out[1]["messages"][-1]["content"].startswith("Keep it plain.") and out[1]["response"] == prompts[0]["response"]
    assert all(r["placement"] == "system" for r in wording_rows(prompts, wordings, "system") if r["command"])


def frame(rows):
    out = pd.DataFrame(rows, columns=["prompt_id", "kind", "command", "value", "temperature", "top_p"])
    alone = out[out["kind"] == "none"].set_index("prompt_id")["temperature"]
    out["ratio"] = out["temperature"] / out["prompt_id"].map(alone)
    return out


def test_each_kind_is_scored_by_its_own_measure_and_the_weakest_wordings_come_first():
    scored = frame([
        ("a", "none", None, None, 1.0, 0.8), ("b", "none", None, None, 0.5, 0.8),
        ("a", "low", "calm", None, 0.5, 0.7), ("b", "low", "calm", None, 0.6, 0.7),  # b: x1.2, the wrong way
        ("a", "high", "wild", None, 2.0, 0.9), ("b", "high", "wild", None, 1.0, 0.9),
        ("a", "no_randomness", "none at all", None, 0.1, 0.5), ("b", "no_randomness", "none at all", None, 0.2, 0.5),
        ("a", "named_temperature", "T 0.3", 0.3, 0.38, 0.8), ("b", "named_temperature", "T 0.3", 0.3, 0.46, 0.8),
        ("a", "named_temperature", "T 1.6", 1.6, 1.95, 0.8), ("b", "named_temperature", "T 1.6", 1.6, 1.99, 0.8),
        ("a", "named_top_p", "P 0.5", 0.5, 1.0, 0.55), ("b", "named_top_p", "P 0.5", 0.5, 1.0, 0.65),
    ])
    measures = wording_measures(scored)
    kinds = measures["by_kind"]
    assert measures["n_prompts"] == 2
    assert kinds["low"]["share"] == 0.5 and kinds["low"]["median_ratio"] == pytest.approx((0.5 * 1.2) ** 0.5)
    assert kinds["high"]["share"] == 1.0 and kinds["high"]["median_ratio"] == pytest.approx(2.0)
    assert kinds["no_randomness"]["share"] == 0.5  # T <= 0.15
    assert kinds["named_temperature"]["share"] == 0.75  # within max(0.1, 0.25 X): 0.46 misses 0.3, 1.99 meets 1.6
    assert kinds["named_top_p"]["share"] == 0.5 and kinds["named_top_p"]["median_ratio"] is None
    assert kinds["low"]["lo"] < 0.5 < kinds["low"]["hi"]
    assert [w["share"] for w in measures["by_wording"]] == sorted(w["share"] for w in measures["by_wording"])
    relative_only = wording_measures(scored[scored["kind"].isin(["none", "high"])].assign(value=None))
    assert list(relative_only["by_kind"]) == ["high"]  # a file of relative wordings alone has no values to compare
    lines = format_measures(measures)
    assert "single-command consistency, low" in lines[1] and "50% of 2 rows" in lines[1]
    assert any("x0.77" in line and "calm" in line for line in lines)
    assert any("T 0.42 for 0.3" in line for line in lines)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny model folder, 'cold' heads (T at its floor) for it, and control data with two held-out prompts."""
    root = tmp_path_factory.mktemp("wordings")
    save_tiny_model(root / "model")
    base, _ = load_base_model(str(root / "model"))
    heads = AutoDecoModel(base)
    with torch.no_grad():
        heads.heads.temperature_head.mlp[-1].bias.fill_(-30.0)
    heads.save_pretrained(root / "cold")
    rows = synthetic_control_rows(num_prompts=4, num_eval_prompts=2)
    (root / "control_data.jsonl").write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    return root


def test_main_scores_every_wording_and_heads_at_the_temperature_floor_obey_only_the_cold_commands(folders, tmp_path, capsys):
    path = write(tmp_path, WORDINGS)
    out = tmp_path / "measures.json"
    common = ["--heads", str(folders / "cold"), "--data", str(folders / "control_data.jsonl"), "--no-progress"]
    measures = main([*common, "--wordings", str(path), "--out", str(out)])
    kinds = measures["by_kind"]
    assert {k: v["n_rows"] for k, v in kinds.items()} == {"low": 2, "high": 4, "no_randomness": 2,
                                                          "named_temperature": 4, "named_top_p": 2}
    assert kinds["no_randomness"]["share"] == 1.0  # T at the floor is "no randomness" on every prompt
    by_command = {w["command"]: w for w in measures["by_wording"]}
    assert by_command["Set your temperature to 0.0."]["share"] == 1.0 and by_command["Use temperature 1.5."]["share"] == 0.0
    assert json.loads(out.read_text())["by_kind"]["high"]["n_wordings"] == 2
    assert "2 held-out prompts" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists"):
        main([*common, "--wordings", str(path), "--out", str(out)])
    with pytest.raises(SystemExit, match=r"--wordings .*wrong\.yaml: unknown key"):
        main([*common, "--wordings", str(write(tmp_path, "loud: [x]\n", "wrong.yaml"))])
    with pytest.raises(SystemExit, match="--max-prompts must be >= 1"):
        main([*common, "--wordings", str(path), "--max-prompts", "0"])
    with pytest.raises(SystemExit, match="--data: control data .*missing.* does not exist"):
        main(["--heads", str(folders / "cold"), "--data", str(tmp_path / "missing"), "--wordings", str(path)])


SHIPPED_WORDINGS = sorted(path.name for path in (Path(__file__).parent.parent / "control_data").glob("wordings_*.yaml"))


def test_every_shipped_wordings_file_is_checked():
    assert {"wordings_example.yaml", "wordings_second.yaml", "wordings_third.yaml", "wordings_fourth.yaml"} <= set(SHIPPED_WORDINGS)


@pytest.mark.parametrize("name", SHIPPED_WORDINGS)
def test_the_shipped_wordings_files_read_cleanly_and_none_of_their_relative_wordings_is_in_the_library(name):
    from steerdeco.control.commands import load_commands
    from steerdeco.control.phrasings import load_grammar

    wordings = read_wordings(Path(__file__).parent.parent / "control_data" / name)
    library = {c.text.strip().lower() for c in load_commands().commands} | {
        c.text.strip().lower() for c in load_grammar().commands()}
    relative = [e["command"] for kind in ("low", "high", "no_randomness") for e in wordings.get(kind, [])]
    assert len(relative) >= 25 and all(isinstance(e["value"], float) for e in wordings["named_temperature"])
    assert not [w for w in relative if w.strip().lower() in library]
