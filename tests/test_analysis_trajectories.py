"""Tests of analysis.trajectories: selecting a trajectory and position-binned means."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import row

from analysis.trajectories import binned_trajectories, example_group, select_trajectory


def test_select_trajectory(planted):
    group = example_group(planted)
    traj = select_trajectory(planted, group)
    assert list(dict.fromkeys(traj["variant"])) == ["none", "low", "high"]
    assert (traj.groupby("variant").size() == 8).all()
    with pytest.raises(ValueError, match="not in"):
        select_trajectory(planted, "nope")


def test_binned_trajectories_hand_computed():
    ramp = np.arange(10, dtype=float)
    rows = [row(g, "none", ramp, p=ramp / 10) for g in ("a", "b")]
    out = binned_trajectories(pd.DataFrame(rows), n_bins=5, variants=("none",))
    t = out[out["metric"] == "temperature"]
    np.testing.assert_allclose(t["mean"], [0.5, 2.5, 4.5, 6.5, 8.5])
    np.testing.assert_allclose(t["lo"], t["mean"])  # identical groups: zero-width band
    np.testing.assert_allclose(t["bin_center"], [0.1, 0.3, 0.5, 0.7, 0.9])
    absolute = binned_trajectories(pd.DataFrame(rows), n_bins=2, bin_width=3, variants=("none",), band="bootstrap", n_boot=20)
    np.testing.assert_allclose(absolute[absolute["metric"] == "temperature"]["mean"], [1.0, 4.0])
