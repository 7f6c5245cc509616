"""The phrasing grammar: wordings from frames x cores, split-disjoint, and commands that name values."""

import random

import pytest
import yaml

from steerdeco.control import ControlDataError
from steerdeco.control.build import BuildConfig, load_library
from steerdeco.control.phrasings import FORMS, format_value, load_grammar, number_style, parse_grammar
from steerdeco.control.prompts import load_builtin_prompts
from steerdeco.control.variants import assign_splits, plan_rows

SMALL = {
    "version": 1,
    "forms": {"imp": {"train": ["{Imp}.", "Please {imp}."], "heldout": ["Could you {imp}?"]}},
    "cores": {
        "low": {1: {"imp": {"train": ["be calmer"], "heldout": ["be steadier"]}, "sentence": {"train": ["Calm, please."]}}},
        "high": {1: {"imp": {"train": ["be wilder"], "heldout": ["be bolder"]}}},
    },
    "named": {
        "temperature": {"train": ["Use temperature {x}."], "heldout": ["T is {x}."], "train_values": [0.2, 0.4],
                        "eval_values": [0.3]},
        "top_p": {"train": ["top-p {x}"], "heldout": ["nucleus {x}"], "train_values": [0.5], "eval_values": [0.55]},
    },
}


def test_train_wordings_combine_train_frames_with_train_cores_only():
    grammar = parse_grammar(SMALL)
    texts = {(c.direction, c.level, c.split): set() for c in grammar.commands()}
    for command in grammar.commands():
        texts[(command.direction, command.level, command.split)].add(command.text)
    assert texts[("low", 1, "train")] == {"Be calmer.", "Please be calmer.", "Calm, please."}
    assert texts[("low", 1, "heldout")] == {"Could you be steadier?"}
    assert texts[("high", 1, "heldout")] == {"Could you be bolder?"}


def test_project_grammar_keeps_held_out_frames_and_cores_out_of_training():
    grammar = load_grammar()
    commands = grammar.commands()
    train = " | ".join(c.text.casefold() for c in commands if c.split == "train")
    for form in FORMS:
        for frame in grammar.frames[form]["heldout"]:
            prefix = frame.split("{")[0].strip().casefold()
            assert not prefix or prefix not in train, frame
    for levels in grammar.cores.values():
        for forms in levels.values():
            for by_split in forms.values():
                for core in by_split["heldout"]:
                    assert core.casefold().rstrip(".") not in train, core
    counts = {(c.direction, c.level, c.split) for c in commands}
    assert counts == {(d, lv, s) for d in ("low", "high") for lv in (1, 2, 3) for s in ("train", "heldout")}
    assert sum(c.split == "train" for c in commands) > 1000  # many wordings per level, not a list


def test_grammar_wordings_join_the_library_and_replace_nothing():
    library, grammar = load_library(BuildConfig())
    handwritten, _ = load_library(BuildConfig(phrasings="none"))
    assert grammar is not None and len(library) > len(handwritten) + 1000
    assert {c.id for c in handwritten} <= {c.id for c in library}
    own, none = load_library(BuildConfig(commands=str(handwritten.source)))
    assert none is None and len(own) == len(handwritten)  # a library of one's own gets no grammar by default


@pytest.mark.parametrize(
    ("value", "style", "text"),
    [(0.3, "plain", "0.3"), (0.3, "padded", "0.30"), (0.3, "bare", ".3"), (0.0, "words", "zero"),
     (1.25, "words", "one point two five"), (0.45, "percent", "45%"), (2.0, "plain", "2"), (1.5, "bare", "1.5")],
)
def test_numbers_are_written_in_several_formats(value, style, text):
    assert format_value(value, style) == text


@pytest.mark.parametrize("value", [0.0, 0.05, 0.3, 0.35, 1.0, 1.25, 2.0])
@pytest.mark.parametrize("style", ["plain", "padded", "bare", "words", "percent"])
def test_number_style_reads_back_the_format_a_value_was_written_in(value, style):
    written = format_value(value, style)
    expected = "plain" if written == format_value(value, "plain") else style  # 0.35 padded is 0.35 plain
    assert number_style(f"For this one, use a value of {written}, please.", value) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [("Use temperature 10.3.", 0.3), ("Use temperature 0.35.", 0.3), ("Use top-p 3%.", 0.3), ("zero point three five", 0.3),
     ("temperature zero point one", 1.0), ("For this one, temperature 1.0.", 1.0), ("Use a third.", 0.33)],
)
def test_number_style_finds_no_format_where_the_value_is_not_written(text, value):
    assert number_style(text, value) is None


def test_named_commands_carry_their_target_and_split():
    grammar = parse_grammar(SMALL)
    rng = random.Random(0)
    command = grammar.named_command("temperature", 0.3, "heldout", rng)
    assert command.direction == "named" and command.target_temperature == 0.3 and command.target_top_p is None
    assert command.text.startswith("T is ") and command.split == "heldout"
    command = grammar.named_command("top_p", 0.55, "train", rng)
    assert command.target_top_p == 0.55 and command.target_temperature is None and command.text.startswith("top-p ")
    assert grammar.values("temperature", "train") == [0.2, 0.4] and grammar.values("temperature", "eval") == [0.3]


def test_named_rows_draw_train_values_on_train_prompts_and_eval_values_on_eval_prompts():
    library, grammar = load_library(BuildConfig())
    prompts = load_builtin_prompts()[:40]
    splits = assign_splits(prompts, 0.25, seed=0)
    rows = plan_rows(prompts, splits, library, seed=0, grammar=grammar, named_per_group=2)
    named = [r for r in rows if r["variant"] == "named"]
    train_values = set(grammar.values("temperature", "train"))
    for row in named:
        assert row["level"] == 0 and (row["target_temperature"] is None) != (row["target_top_p"] is None)
        if row["split"] == "train":
            assert row["command_split"] == "train"
            assert row["target_top_p"] is not None or row["target_temperature"] in train_values
    eval_temperatures = {r["target_temperature"] for r in named if r["split"] == "eval" and r["target_temperature"] is not None}
    assert eval_temperatures - train_values  # values between the trained ones are asked on eval prompts
    per_group = {}
    for row in named:
        per_group[(row["group_id"], row["command_split"])] = per_group.get((row["group_id"], row["command_split"]), 0) + 1
    assert set(per_group.values()) == {2}
    assert plan_rows(prompts, splits, library, seed=0, grammar=grammar, named_per_group=2) == rows  # seeded


def test_named_rows_need_a_grammar():
    library, _ = load_library(BuildConfig(phrasings="none"))
    prompts = load_builtin_prompts()[:4]
    with pytest.raises(ControlDataError, match="--named-per-group needs a phrasing grammar"):
        plan_rows(prompts, assign_splits(prompts, 0.25, 0), library, seed=0, named_per_group=1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda g: g["forms"]["imp"].update(train=["No slot here."]), r"has no \{imp\} slot"),
        (lambda g: g["forms"].update(verb={"train": ["{verb}"]}), r"forms\.verb: unknown form"),
        (lambda g: g["cores"]["low"][1].update(adv={"train": ["calmly"]}), r"cores\.low\.1\.adv: no frames of that form"),
        (lambda g: g["named"]["temperature"].update(train_values=[0.2, 2.5]), r"named\.temperature\.train_values: 2\.5 is not"),
        (lambda g: g["named"]["top_p"].update(heldout=["nucleus"]), r"named\.top_p\.heldout: frame 'nucleus' has no \{x\}"),
        (lambda g: g["cores"]["low"][1]["imp"].update(extra=["x"]), r"unknown key\(s\) \['extra'\]"),
    ],
)
def test_grammar_errors_name_the_file_and_the_entry(tmp_path, change, match):
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    change(data)
    path = tmp_path / "grammar.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ControlDataError, match=match) as error:
        load_grammar(path)
    assert str(path) in str(error.value)


def test_missing_grammar_file_names_the_flag(tmp_path):
    with pytest.raises(ControlDataError, match=r"does not exist \(--phrasings\)"):
        load_grammar(tmp_path / "nope.yaml")


def test_every_no_randomness_wording_asks_for_temperature_zero():
    library, _ = load_library(BuildConfig())
    low3 = library.select(direction="low", level=3)
    assert low3 and all(c.target_temperature is not None and c.target_temperature <= 0.1 for c in low3)
    assert all(c.target_temperature is None for c in library.select(direction="high", level=3) if c.id.startswith("gen-"))
    bad = yaml.safe_load(yaml.safe_dump(SMALL))
    bad["cores"]["low"][1]["target_temperature"] = 1.5
    with pytest.raises(ControlDataError, match=r"cores\.low\.1\.target_temperature: 1\.5 is not"):
        parse_grammar(bad)
