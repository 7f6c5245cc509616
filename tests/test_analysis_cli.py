"""``python -m analysis`` end to end on a tiny random model, its Python entry point, and the scores files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.cli import cli, main
from analysis.formatting import format_consistency_table
from analysis.scores_io import SCORE_FILES, load_results
from steerdeco import AutoDecoModel
from steerdeco.control import BuildConfig, build_control_data
from steerdeco.errors import AnalysisError
from steerdeco.testing import jitter_heads, save_tiny_model, tiny_model
from steerdeco.training import load_base_model

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain why the sky is blue.",
    "What is the capital of France?",
    "Solve 12 times 7.",
    "List three facts about volcanoes.",
    "Tell a story about a robot.",
]
FAST = ["--n-boot", "30", "--no-progress", "--log-level", "WARNING"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model folder, heads trained for it (jittered fresh heads), prompts and control data with responses."""
    root = tmp_path_factory.mktemp("analysis_cli")
    save_tiny_model(root / "model")  # blank tokens suppressed, so generated responses are not empty
    base, _ = load_base_model(str(root / "model"))
    jitter_heads(AutoDecoModel(base)).save_pretrained(root / "heads")  # heads config names root/model as base model
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "category": "c", "prompt": p, "completion": "The quick brown fox "
                                           "jumps over the lazy dog. The answer is 84."}) + "\n" for i, p in enumerate(PROMPTS)))
    common = dict(prompts=[str(prompts)], eval_fraction=0.5, progress=False, seed=0)
    build_control_data(BuildConfig(out=str(root / "data"), responses="given", **common))
    build_control_data(BuildConfig(out=str(root / "data_no_responses"), responses="none", **common))
    return root


@pytest.fixture(scope="module")
def full_run(setup):
    """Both protocols, two seeds, figures; the base model comes from the heads config."""
    out = setup / "results"
    result = main(["--heads", str(setup / "heads"), "--data", str(setup / "data"), "--out", str(out),
                   "--seeds", "0,1", "--max-new-tokens", "5", *FAST])
    return out, result


def test_cli_writes_the_results_folder(full_run, setup):
    out, result = full_run
    assert (out / "report.md").read_text(encoding="utf-8") == result.markdown
    for protocol in ("teacher_forced", "free_running"):
        main_csv = pd.read_csv(out / "tables" / f"{protocol}_main.csv")
        assert {"none", "low", "high", "placebo"} <= set(main_csv["variant"])
        text = format_consistency_table(result.tables[f"{protocol}.main"])
        for label in ("| Baseline |", "| Low |", "| High |", "| Placebo |"):
            assert label in text
        assert plots.is_png(out / "figures" / f"{protocol}_trajectory_example.png")
        assert plots.is_png(out / "figures" / f"{protocol}_binned_trajectories.png")
        assert (out / SCORE_FILES[protocol]).is_file()
    assert "## Run" in result.markdown and "teacher_forced_scores.jsonl" in result.markdown
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == str(setup / "model") and run["seeds"] == [0, 1] and run["split"] == "eval"
    assert run["n_groups"] == 3 and "responses" not in run  # on-the-fly build options are left out with --data
    assert not (out / "work").exists()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".results")) == []  # no temporary folders
    free = result.scores["free_running"]
    assert sorted(free["seed"].unique()) == [0, 1] and set(free["split"]) == {"eval"}
    assert free["temperature"].map(len).max() <= 5 and free["text"].notna().all()
    # the saved raw scores read back as the same scores
    loaded = load_results(out)
    for protocol, scores in result.scores.items():
        back = loaded[protocol]
        assert list(back["group_id"]) == list(scores["group_id"])
        for a, b in zip(back["temperature"], scores["temperature"], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_cli_writes_the_prompt_only_baseline_and_the_scorecard(full_run):
    out, result = full_run
    assert sorted(load_results(out)) == ["free_running", "prompt_only", "teacher_forced"]
    prompt_only = result.scores["prompt_only"]
    free = result.scores["free_running"]
    assert len(prompt_only) == (free["command_split"] != "heldout").sum() and set(free["variant"]) <= {"none", "low", "high", "placebo"}
    assert "heldout" not in set(prompt_only["command_split"])  # the baseline reads the train wordings' rows
    levels = free.loc[free["variant"].isin(["low", "high"]), "level"]
    assert set(levels) == {3}  # the default selection: none, low3, high3, placebo, zero
    assert free.loc[free["variant"] == "none", "prompt_text"].isin(PROMPTS).all()
    assert "| " + free.loc[free["variant"] == "none", "prompt_text"].iloc[0] in result.markdown  # samples side by side
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["scorecard"][0]["key"] == "baseline_t" and "## Scorecard (issues 12 and 16)" in result.markdown
    run_info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run_info["prompt_only_temperature"] == 1.0 and run_info["free_running_variants"] == "none,low3,high3,placebo,zero"
    # the LM guard is off by default: no measure, an n/a scorecard row, no report section
    assert "lm_guard" not in summary["measures"] and run_info["lm_guard"] == 0
    assert next(r for r in summary["scorecard"] if r["key"] == "lm_guard")["status"] == "n/a"
    assert "LM guard" not in result.markdown


def test_cli_lm_guard_writes_its_measure_row_and_section(setup, tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": f"a{i}", "prompt": f"Solve {i} times 7.", "completion": f"The answer is "
                                           f"{7 * i}."}) + "\n" for i in range(5)))
    out = tmp_path / "guarded"
    args = ["--heads", str(setup / "heads"), "--data", str(setup / "data"), "--protocols", "teacher_forced", "--no-figures",
            "--lm-guard", "3", *FAST]
    result = main([*args, "--out", str(out), "--lm-guard-source", str(answers)])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    guard = summary["measures"]["lm_guard"]
    assert guard["n_examples"] == 3 and guard["backbone"] == "unchanged" and guard["relative_change"] == 0.0
    assert guard["base_loss"] > 0 and guard["source"] == str(answers)
    assert next(r for r in summary["scorecard"] if r["key"] == "lm_guard")["status"] == "pass"
    assert "## LM loss on human-written text (LM guard)" in result.markdown
    # the prompts of the control data are never scored: here they are all of the source's
    with pytest.raises(AnalysisError, match=r"--lm-guard-source: .*prompts.jsonl: no prompt has a 'completion' .* outside the 6 excluded"):
        main([*args, "--out", str(tmp_path / "none"), "--lm-guard-source", str(setup / "prompts.jsonl")])


def test_cli_prints_the_consistency_table(setup, capsys):
    out = setup / "printed"
    main(["--heads", str(setup / "heads"), "--model", str(setup / "model"), "--data", str(setup / "data" / "control_data.jsonl"),
          "--out", str(out), "--protocols", "teacher_forced", "--no-figures", *FAST])
    printed = capsys.readouterr().out
    assert "Teacher-forced consistency:" in printed and "| Baseline | 3 |" in printed and "| High | 3 |" in printed
    assert "Free-running" not in printed and not (out / SCORE_FILES["free_running"]).exists()
    assert not (out / "figures").exists() or not any((out / "figures").iterdir())


def test_cli_refuses_to_overwrite(full_run, setup, tmp_path):
    out, _ = full_run
    before = (out / "report.md").read_bytes()
    args = ["--heads", str(setup / "heads"), "--data", str(setup / "data"), "--protocols", "teacher_forced", "--no-figures", *FAST]
    with pytest.raises(AnalysisError, match="exists and is not empty; pass --overwrite"):
        main([*args, "--out", str(out)])
    assert (out / "report.md").read_bytes() == before
    # an empty folder is fine; a file is not
    empty = tmp_path / "empty"
    empty.mkdir()
    main([*args, "--out", str(empty)])
    assert (empty / "report.md").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(AnalysisError, match="is a file"):
        main([*args, "--out", str(tmp_path / "file")])
    # --overwrite replaces the whole folder
    main([*args, "--out", str(empty), "--overwrite", "--max-groups", "2"])
    assert json.loads((empty / "run.json").read_text())["n_groups"] == 2


def test_cli_builds_control_data_on_the_fly_with_a_config_file(setup, tmp_path):
    config = tmp_path / "analysis.yaml"
    config.write_text(f"heads: {setup / 'heads'}\nmodel: {setup / 'model'}\nprompts: [{setup / 'prompts.jsonl'}]\n"
                      "response-tokens: 6\neval_fraction: 0.5\nprotocols: teacher_forced\nn_boot: 30\nfigures: false\n"
                      "progress: false\nsplit: train\n")
    out = tmp_path / "results"
    result = main(["--config", str(config), "--out", str(out), "--split", "all", "--log-level", "WARNING"])  # flags win
    responses = [json.loads(line) for line in (out / "work" / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == len(PROMPTS) and all(r["response"] for r in responses)  # generated by the base model
    rows = [json.loads(line) for line in (out / "work" / "control_data" / "control_data.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "eval"}
    scores = result.scores["teacher_forced"]
    assert len(scores) == len(rows) and scores["group_id"].nunique() == len(PROMPTS)
    assert "teacher_forced.by_prompt_split" in result.tables  # --split all compares train and eval prompts
    run = json.loads((out / "run.json").read_text())
    assert run["data"] == "work/control_data" and run["response_tokens"] == 6 and run["split"] == "all"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temporary work folder was moved


@pytest.fixture(scope="module")
def other_heads(setup):
    """Heads for a tiny model of hidden size 32 (do not fit the hidden-64 model)."""
    folder = setup / "heads_32"
    AutoDecoModel(tiny_model(hidden_size=32, intermediate_size=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("make_args", "match"),
    [
        (lambda s: ["--heads", str(s / "missing"), "--data", str(s / "data")], r"--heads .*missing: no such folder"),
        (lambda s: ["--heads", str(s / "data"), "--data", str(s / "data")], r"--heads .*: no heads.safetensors"),
        (lambda s: ["--heads", str(s / "heads_32"), "--model", str(s / "model"), "--data", str(s / "data")],
         r"expects hidden size 32 but --model .* has hidden size 64"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "data_no_responses")],
         r"--data .*data_no_responses: \d+ of \d+ rows have no response .*--protocols free_running"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "data"), "--protocols", "teacher_forced,beam"],
         r"--protocols: unknown protocol 'beam'"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "nowhere")], r"--data .*nowhere: no such folder"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "prompts.jsonl")], r"--data .*prompts.jsonl: not control data"),
        (lambda s: ["--heads", str(s / "heads")], r"give --data DIR"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "data"), "--prompts", "builtin"], r"either --data"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "data"), "--max-groups", "1"], r"--max-groups must be"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "data"), "--seeds", "0,x"], r"--seeds must be"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "data"), "--free-running-groups", "1"],
         r"--free-running-groups must be an integer >= 2"),
        (lambda s: ["--data", str(s / "data")], r"--heads is required"),
        (lambda s: ["--heads", str(s / "heads"), "--reference-heads", str(s / "missing"), "--data", str(s / "data")],
         r"--reference-heads .*missing: no such folder"),
        (lambda s: ["--heads", str(s / "heads"), "--reference-heads", str(s / "heads_32"), "--data", str(s / "data")],
         r"--reference-heads .*heads_32 expects hidden size 32"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "data"), "--lm-guard", "-1"], r"--lm-guard must be an integer >= 0"),
        (lambda s: ["--heads", str(s / "heads"), "--data", str(s / "data"), "--lm-guard", "2", "--lm-guard-source",
                    str(s / "nowhere.jsonl")], r"--lm-guard-source: prompt file .*nowhere.jsonl does not exist"),
        (lambda s: ["--heads", str(s / "heads"), "--prompts", str(s / "prompts.jsonl"), "--responses", "none"],
         r"--responses none .*teacher_forced"),
        (lambda s: ["--heads", str(s / "heads"), "--model", "nonexistent-model", "--data", str(s / "data")],
         r"--model 'nonexistent-model'.*not 'embedded', 'tiny' or a local model folder"),
    ],
)
def test_cli_errors_name_the_argument(setup, other_heads, tmp_path, make_args, match):
    with pytest.raises(AnalysisError, match=match):
        main([*make_args(setup), "--out", str(tmp_path / "out"), *FAST])
    assert not (tmp_path / "out").exists()


def test_cli_reference_heads_put_the_no_command_guard_on_the_scorecard(setup, tmp_path):
    result = main(["--heads", str(setup / "heads"), "--reference-heads", str(setup / "heads"), "--data", str(setup / "data"),
                   "--out", str(tmp_path / "out"), *FAST])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    guard = summary["measures"]["no_command_reference"]["parameters"]["temperature"]
    assert guard["median_log_ratio"] == pytest.approx(0.0, abs=1e-6) and guard["within"]  # the same heads
    assert "No command: T, P and text as heads not trained to steer" in result.markdown


def test_cli_error_for_a_split_without_rows(setup, tmp_path):
    rows = [json.loads(line) for line in (setup / "data" / "control_data.jsonl").read_text().splitlines()]
    train_only = tmp_path / "train_only.jsonl"
    train_only.write_text("".join(json.dumps(r) + "\n" for r in rows if r["split"] == "train"))
    with pytest.raises(AnalysisError, match=r"no rows with split 'eval' \(splits present: \['train'\]\); choose --split"):
        main(["--heads", str(setup / "heads"), "--data", str(train_only), "--out", str(tmp_path / "out"), *FAST])


def test_config_file_errors(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("heads: x\nbogus: 1\n")
    with pytest.raises(AnalysisError, match="unknown key 'bogus'"):
        main(["--config", str(config)])
    with pytest.raises(AnalysisError, match="no such file"):
        main(["--config", str(tmp_path / "missing.yaml")])


def test_cli_exits_with_status_2_and_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["--heads", str(tmp_path / "missing"), "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "python -m analysis: error: --heads" in capsys.readouterr().err
