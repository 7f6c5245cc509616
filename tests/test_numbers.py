"""steerdeco.numbers: the numbers a prompt writes, in every format the command library uses, per token."""

import math

import pytest
import torch

from steerdeco.control.phrasings import NUMBER_STYLES, format_value
from steerdeco.numbers import NUMBER_FEATURES, NumberReader, number_token_table, written_numbers
from steerdeco.testing import tiny_tokenizer


@pytest.mark.parametrize("style", sorted({s for styles in NUMBER_STYLES.values() for s in styles}))
@pytest.mark.parametrize("value", [0.0, 0.05, 0.3, 0.35, 1.0, 1.25, 2.0])
def test_every_number_style_of_the_library_reads_back_as_its_value(style, value):
    if style == "percent" and value > 1:
        return
    text = f"Please sample at {format_value(value, style)}, thanks."
    assert [v for _, _, v in written_numbers(text)] == [pytest.approx(value)]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("T=1.5, then one point two five", [1.5, 1.25]),
        ("I have 1234 apples.", [1234.0]),
        ("point five", [0.5]),
        ("Answer in 2. Then stop.", [2.0]),
        ("someone said nothing", []),
    ],
)
def test_written_numbers_finds_each_number_once(text, values):
    assert [v for _, _, v in written_numbers(text)] == [pytest.approx(v) for v in values]


def test_the_reader_gives_each_token_of_a_number_its_value_and_nothing_elsewhere():
    tokenizer = tiny_tokenizer()
    reader = NumberReader(number_token_table(tokenizer))
    ids = tokenizer("Use temperature 1.6 and top-p 0.3 now")["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    values = reader.token_values(ids)
    read = {piece.strip() for piece, value in zip(pieces, values, strict=True) if value is not None}
    assert read == {"1", ".", "6", "0", "3"}
    assert sorted({round(value, 6) for value in values if value is not None}) == [0.3, 1.6]
    features = reader(torch.tensor([ids, ids]), torch.tensor([[True] * len(ids), [False] * len(ids)]))
    assert features.shape == (2, len(ids), NUMBER_FEATURES)
    six = pieces.index("6")
    torch.testing.assert_close(features[0, six], torch.tensor([1.0, 1.6, math.log(1.65)]))
    assert float(features[1].abs().sum()) == 0.0  # masked positions read nothing
    assert float(features[0, 0].abs().sum()) == 0.0


def test_an_empty_table_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="no digit tokens"):
        NumberReader({})
