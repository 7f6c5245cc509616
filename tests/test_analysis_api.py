"""Tests of analysis.api: run_analysis on a model in memory, with and without a results folder."""

from __future__ import annotations

import pytest

from analysis.api import run_analysis
from analysis.scores_io import load_results
from steerdeco import AutoDecoModel
from steerdeco.errors import AnalysisError
from steerdeco.testing import jitter_heads, tiny_model_and_tokenizer
from steerdeco.training.synthetic import synthetic_control_records


@pytest.fixture(scope="module")
def in_memory():
    base, tokenizer = tiny_model_and_tokenizer(seed=0)
    return jitter_heads(AutoDecoModel(base), seed=1), tokenizer, synthetic_control_records(num_prompts=6, num_eval_prompts=3)


def test_run_analysis_in_memory(in_memory, tmp_path):
    model, tokenizer, rows = in_memory
    tokenizer.padding_side = "right"
    markdown, tables = run_analysis(model, tokenizer, rows, protocols=["teacher_forced", "free_running"], seeds=(0, 1),
                                    max_new_tokens=4, free_running_groups=3, free_running_variants="all", split="all",
                                    n_boot=30, progress=False)
    assert tokenizer.padding_side == "right"  # restored after free-running generation
    assert "### Consistency (held-out prompts, all phrasings)" in markdown and "](figures/" not in markdown
    for protocol in ("teacher_forced", "free_running"):
        main_table = tables[f"{protocol}.main"]
        assert {"none", "low", "high"} <= set(main_table["variant"])
    assert tables["scores.teacher_forced"]["group_id"].nunique() == 6  # every group teacher-forced, 3 free-running
    assert tables["scores.free_running"]["group_id"].nunique() == 3 and set(tables["scores.free_running"]["seed"]) == {0, 1}
    assert list(tmp_path.iterdir()) == []


def test_run_analysis_writes_a_folder(in_memory, tmp_path):
    model, tokenizer, rows = in_memory
    out = tmp_path / "results"
    markdown, tables = run_analysis(model, tokenizer, rows, out, protocols=("teacher_forced",), split="all", n_boot=30,
                                    figures=False, progress=False, run_info={"heads": "in memory"})
    assert (out / "report.md").read_text(encoding="utf-8") == markdown and "* heads: `in memory`" in markdown
    assert sorted(load_results(out)) == ["teacher_forced"]
    assert "teacher_forced.by_prompt_split" in tables
    with pytest.raises(AnalysisError, match="pass --overwrite \\(overwrite=True\\)"):
        run_analysis(model, tokenizer, rows, out, protocols=("teacher_forced",), progress=False)
    no_response = [{**r, "response": None} for r in rows]
    with pytest.raises(AnalysisError, match="rows have no response"):
        run_analysis(model, tokenizer, no_response, protocols=("teacher_forced",), progress=False)
