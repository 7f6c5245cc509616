"""Tests of steerdeco.io: atomic writes, strict JSON/JSONL/YAML reading, staged output folders."""

import pytest

from steerdeco.io import atomic_write_with


def test_atomic_write_cleans_up_on_failure(tmp_path):
    def broken(tmp):
        with open(tmp, "w") as handle:
            handle.write("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_with(tmp_path / "x.txt", broken)
    assert list(tmp_path.iterdir()) == []
