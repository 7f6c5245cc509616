"""Tests of steerdeco.rows: the control-row contract (variants, signed level, columns, split selection, the reader)."""

import math

import pytest

from steerdeco.errors import ControlDataError
from steerdeco.rows import check_columns, load_control_data, select_split, signed_level


def test_signed_level_orders_variants():
    assert signed_level("low", 3) < signed_level("low", 1) < signed_level("none", 0) < signed_level("high", 1)
    assert signed_level("high", 2) < signed_level("high", 3)
    assert math.isnan(signed_level("placebo", 0))


@pytest.mark.parametrize(("variant", "level", "match"), [("loud", 1, "unknown variant"), ("low", 0, "level >= 1")])
def test_signed_level_rejects_bad_rows(variant, level, match):
    with pytest.raises(ValueError, match=match):
        signed_level(variant, level)


def test_signed_level_puts_low_below_none_below_high_and_placebo_nowhere():
    assert signed_level("low", 2) == -2 and signed_level("high", 3) == 3 and signed_level("none", 0) == 0
    assert math.isnan(signed_level("placebo", 1))


def test_split_selection_keeps_data_order_for_lists_and_datasets():
    import datasets

    rows = [{"group_id": g, "split": s} for g, s in (("a", "train"), ("b", "eval"), ("c", "train"))]
    assert [r["group_id"] for r in select_split(rows, "train")] == ["a", "c"]
    assert select_split(rows, "all") == rows
    assert select_split(datasets.Dataset.from_list(rows), "eval")["group_id"] == ["b"]


def test_rows_without_the_contract_columns_are_refused_with_the_source_named():
    with pytest.raises(ControlDataError, match=r"my\.jsonl: not control data, it lacks the columns \['variant'\]"):
        check_columns([{"group_id": "a"}], ("group_id", "variant"), "my.jsonl")


def test_the_reader_names_the_file_and_line_of_a_malformed_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"group_id": "a"}\n{"group_id": \n', encoding="utf-8")
    with pytest.raises(ControlDataError, match=r"rows\.jsonl:2: malformed JSON"):
        load_control_data(path)
    with pytest.raises(ControlDataError, match="does not exist"):
        load_control_data(tmp_path / "nowhere")
