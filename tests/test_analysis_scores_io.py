"""Tests of analysis.scores_io: variant scores round-trip through JSON Lines."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.scores_io import load_results, load_scores, save_scores
from analysis.synthetic import synthetic_scores


def test_scores_round_trip(tmp_path):
    scores = synthetic_scores(n_groups=3, phrasings=1, n_tokens=(3, 6), texts=True, seed=1)
    scores.at[0, "temperature"] = np.array([0.5, math.nan, 1.25], dtype=np.float32)
    path = save_scores(scores, tmp_path / "s.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["temperature"] == [0.5, None, 1.25] and first["command_id"] is None
    back = load_scores(path)
    assert list(back.columns) == list(scores.columns)
    assert back["temperature"][0].dtype == np.float32 and math.isnan(back["temperature"][0][1])
    for a, b in zip(back["top_p"], scores["top_p"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    pd.testing.assert_series_equal(back["text"], scores["text"])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_scores(scores, path)
    with pytest.raises(FileNotFoundError, match="holds no score files"):
        load_results(tmp_path)
