"""Tests of analysis.notebook: where the notebooks' scores come from."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.notebook import notebook_scores, tiny_model_scores
from analysis.scores_io import SCORE_FILES, save_scores


def test_notebook_scores_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEERDECO_RESULTS", raising=False)
    scores, source = notebook_scores(None, "tiny", "free_running")
    assert "synthetic" in source and scores["text"].notna().all() and sorted(scores["seed"].unique()) == [0, 1]
    save_scores(scores, tmp_path / "results" / SCORE_FILES["free_running"])
    scores2, source2 = notebook_scores(None, "tiny", "free_running")  # ./results is picked up
    assert source2 == "free_running scores of results" and len(scores2) == len(scores)
    with pytest.raises(ValueError, match="not 'teacher_forced'"):
        notebook_scores(None, "tiny", "teacher_forced")
    monkeypatch.setenv("STEERDECO_RESULTS", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="STEERDECO_RESULTS"):
        notebook_scores(None, "tiny", "free_running")


def test_tiny_model_scores_vary():
    scores = tiny_model_scores("teacher_forced", num_prompts=4)
    assert set(scores["variant"]) == {"none", "low", "high", "placebo", "named"}
    assert np.concatenate(list(scores["temperature"])).std() > 0
