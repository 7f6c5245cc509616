"""Tests of steerdeco.options: a YAML --config file merged under command-line flags, option checks."""

import argparse

import pytest

from steerdeco.errors import AnalysisError
from steerdeco.options import check_int, merge_config


def test_flags_win_over_the_config_file_and_the_log_level_is_taken_out(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max-groups: 4\nseed: 3\nlog_level: DEBUG\n", encoding="utf-8")
    args = argparse.Namespace(config=str(config), seed=7, out=None)
    options, log_level = merge_config(args, ("max_groups", "seed", "out"), AnalysisError)
    assert options == {"max_groups": 4, "seed": 7} and log_level == "DEBUG"
    assert merge_config(argparse.Namespace(seed=1), ("seed",)) == ({"seed": 1}, "INFO")


def test_an_unknown_key_or_log_level_is_named(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_grups: 4\n", encoding="utf-8")
    with pytest.raises(AnalysisError, match=r"unknown key 'max_grups'; known keys: max_groups"):
        merge_config(argparse.Namespace(config=str(config)), ("max_groups",), AnalysisError)
    with pytest.raises(AnalysisError, match="--log-level must be one of DEBUG"):
        merge_config(argparse.Namespace(log_level="LOUD"), (), AnalysisError)


@pytest.mark.parametrize("value", [0, True, 1.5, "3"])
def test_check_int_refuses_what_is_not_an_integer_at_least_the_minimum(value):
    with pytest.raises(ValueError, match=r"--batch-size must be an integer >= 1"):
        check_int(value, "batch_size", 1)
