"""Tests of steerdeco.io: atomic writes, strict JSON/JSONL/YAML reading, staged output folders."""

import pytest

from steerdeco.io import atomic_write_with, file_mode, read_jsonl, staged_folder, write_jsonl


def test_atomic_write_cleans_up_on_failure(tmp_path):
    def broken(tmp):
        with open(tmp, "w") as handle:
            handle.write("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_with(tmp_path / "x.txt", broken)
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_get_the_mode_a_plain_open_gives(tmp_path):
    path = atomic_write_with(tmp_path / "heads.bin", lambda tmp: open(tmp, "wb").close())
    assert path.stat().st_mode & 0o777 == file_mode()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        atomic_write_with(path, lambda tmp: None, overwrite=False)


def test_jsonl_round_trips_and_a_bad_line_is_named(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"a": 1, "text": "naïve"}, {"a": 2}])
    assert list(read_jsonl(path, "rows")) == [(1, {"a": 1, "text": "naïve"}), (2, {"a": 2})]
    path.write_text('{"a": 1}\n[1]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows .*rows\.jsonl:2: expected a JSON object"):
        list(read_jsonl(path, "rows"))


def test_a_staged_folder_replaces_the_old_one_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out) as folder:
        (folder / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "old.txt").exists()
    with staged_folder(out) as folder:
        (folder / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
