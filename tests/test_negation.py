import pytest
import torch

from steerdeco import AutoDecoModel, HeadsConfig
from steerdeco.negation import BREAK, NEGATOR, NegationReader, negation_token_table, token_role

# token ids of a made-up vocabulary: 1 "not", 2 ",", 3.. plain words
TABLE = {"1": NEGATOR, "2": BREAK}
OPTIONS = dict(hidden_size=64, context_features=True, steering_width=8, context_in_mlp=False,
               context_pooling="prompt_attention", context_layer=1, steering_levels=3)


def test_token_roles_name_negators_and_clause_breaks_and_leave_other_words_plain():
    assert [token_role(p) for p in ("Don", "'t", " not", " avoid", " less", "\u2019t", " no", "Nothing", " without")] == [
        None, NEGATOR, NEGATOR, NEGATOR, NEGATOR, NEGATOR, NEGATOR, NEGATOR, NEGATOR]
    assert [token_role(p) for p in (" Eliminate", " remove", " ditch", " disable", " lower", " raise", " reduce")] == [
        NEGATOR, NEGATOR, NEGATOR, NEGATOR, None, None, None]  # "lower the temperature" keeps its own word
    assert [token_role(p) for p in (".", ",", "!\n", " but", " And", " safe", " knot", " nobody's")] == [
        BREAK, BREAK, BREAK, BREAK, BREAK, None, None, None]


def test_a_negation_governs_the_rest_of_its_clause_and_two_cancel():
    reader = NegationReader(TABLE)
    negators, negated = reader(torch.tensor([[5, 1, 6, 7, 2, 8], [1, 1, 6, 2, 1, 7]]))
    assert negators.tolist() == [[False, True, False, False, False, False], [True, True, False, False, True, False]]
    assert negated.tolist() == [[False, False, True, True, False, False], [False, False, False, False, False, True]]
    _, negated = reader(torch.tensor([[0, 0, 1, 6]]), torch.tensor([[0, 0, 1, 1]]))  # left padding
    assert negated.tolist() == [[False, False, False, True]]


def test_a_negator_of_several_tokens_is_one_negation_and_its_pieces_alone_are_plain_words():
    reader = NegationReader({**TABLE, "7 8": NEGATOR, "7 8 9": NEGATOR})
    negators, negated = reader(torch.tensor([[5, 7, 8, 6, 9], [5, 7, 6, 8, 9], [7, 8, 9, 6, 1]]))
    assert negators.tolist() == [[False, True, True, False, False], [False] * 5, [True, True, True, False, True]]
    assert negated.tolist() == [[False, False, False, True, True], [False] * 5, [False, False, False, True, False]]


def test_a_sentence_that_opens_with_a_negating_verb_negates_the_rest_whatever_its_tokens(tiny):
    _, tokenizer = tiny
    reader = NegationReader(negation_token_table(tokenizer))
    for verb in ("Eliminate", "Ditch", "Avoid", "Disable"):
        ids = tokenizer(f"{verb} the randomness. Thanks", add_special_tokens=False)["input_ids"]
        negators, negated = reader.token_parts(ids)
        verb_tokens = len(tokenizer(verb, add_special_tokens=False)["input_ids"])
        assert negators == [True] * verb_tokens + [False] * (len(ids) - verb_tokens), verb
        assert tokenizer.decode([i for i, n in zip(ids, negated, strict=True) if n]) == " the randomness", verb


def _governed(tokenizer, text: str) -> str:
    """The words of ``text`` that a negation governs, as the table of ``tokenizer`` reads them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    _, negated = NegationReader(negation_token_table(tokenizer)).token_parts(ids)
    return tokenizer.decode([i for i, n in zip(ids, negated, strict=True) if n])


def test_a_contrast_negates_what_follows_it(tiny):
    _, tokenizer = tiny
    for text, governed in (("Use plain words rather than fancy ones. Thanks", " fancy ones"),
                           ("Rather than the usual, surprise me.", " the usual"),
                           ("Write plainly instead of playfully.", " playfully"),
                           ("Be wild, as opposed to safe.", " safe")):
        assert _governed(tokenizer, text) == governed, text
    assert token_role(" rather") == BREAK and token_role(" instead") == BREAK  # alone they only end a clause


def test_an_avoidance_idiom_negates_what_follows_it_and_its_words_alone_do_not(tiny):
    _, tokenizer = tiny
    for text, governed in (("Steer clear of the expected. Thanks", " the expected"),
                           ("Please stay away from standard phrasing.", " standard phrasing"),
                           ("Keep it precise and free of unusual words.", " unusual words"),
                           ("Get rid of all randomness.", " all randomness"),
                           ("Steer away from the predictable choice.", " the predictable choice"),
                           ("Stay away, keep it free and clear.", "")):
        assert _governed(tokenizer, text) == governed, text


def test_the_prefix_non_negates_the_rest_of_its_clause(tiny):
    _, tokenizer = tiny
    assert token_role(" non") == NEGATOR and token_role(" none") == NEGATOR and token_role(" nonce") is None
    for text, governed in (("Make it non-random. Thanks", "-random"),
                           ("Non-random, please, and wild otherwise.", "-random"),
                           ("Give a nonstandard answer.", "standard answer")):
        assert _governed(tokenizer, text) == governed, text


def test_the_table_of_a_tokenizer_breaks_at_punctuation_and_special_tokens(tiny):
    _, tokenizer = tiny
    table = negation_token_table(tokenizer)
    assert table[str(tokenizer.convert_tokens_to_ids("."))] == BREAK
    assert all(table[str(i)] == BREAK for i in tokenizer.all_special_ids)
    with pytest.raises(ValueError, match="maps token ids to one of 'negator', 'break'"):
        NegationReader({"3": "maybe"})
    with pytest.raises(ValueError, match="several token ids names a negator word"):
        NegationReader({"3 4": BREAK})


def mirrored_heads(base):
    model = AutoDecoModel(base, HeadsConfig(**OPTIONS, negation_scope=True, negation_tokens=TABLE))
    with torch.no_grad():
        for path in (model.heads.temperature_head.steering, model.heads.top_p_head.steering):
            path.mlp[-1].weight.normal_(0, 0.5)
            path.mlp[-1].bias.normal_(0, 0.5)
        model.heads.prompt_pool.score[-1].weight.normal_(0, 0.5)
    return model.heads


def test_words_inside_a_negation_read_the_turned_around_level_and_without_one_nothing_changes(tiny):
    base, _ = tiny
    heads = mirrored_heads(base)
    plain = AutoDecoModel(base, HeadsConfig(**OPTIONS)).heads
    plain.load_state_dict(heads.state_dict())
    words = torch.randn(1, 3, 64)
    ids = torch.tensor([[5, 6, 7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    context = heads.pool_prompt(words, mask, ids)
    assert context.shape == (1, 64 + 2 * 64 + 1)
    torch.testing.assert_close(heads.level_logits(context).softmax(-1), plain.level_logits(plain.pool_prompt(words, mask)).softmax(-1))
    hidden, logits = torch.randn(4, 64), torch.randn(4, 20)
    rows = torch.zeros(4, dtype=torch.long)
    for a, b in zip(heads(hidden, logits, context=context, rows=rows),
                    plain(hidden, logits, context=plain.pool_prompt(words, mask), rows=rows), strict=True):
        torch.testing.assert_close(a, b)
    levels = heads.level_logits(context).softmax(-1)
    negated = heads.pool_prompt(torch.cat([torch.randn(1, 1, 64), words], dim=1), torch.ones(1, 4, dtype=torch.bool),
                                torch.tensor([[1, 5, 6, 7]]))  # "not" + the same words: the negator is left out
    torch.testing.assert_close(negated[:, -1], torch.ones(1))
    torch.testing.assert_close(heads.level_logits(negated).exp(), levels.flip(-1))


def test_negation_scope_needs_levels_a_table_and_the_prompt_ids(tiny):
    base, _ = tiny
    with pytest.raises(ValueError, match="negation_scope needs steering_levels > 0"):
        HeadsConfig(**{**OPTIONS, "steering_levels": 0}, negation_scope=True)
    with pytest.raises(ValueError, match="negation_tokens must map token ids"):
        HeadsConfig(**OPTIONS, negation_scope=True, negation_tokens={"x": NEGATOR})
    heads = AutoDecoModel(base, HeadsConfig(**OPTIONS, negation_scope=True)).heads
    states, mask = torch.randn(1, 3, 64), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="no negation_tokens table"):
        heads.pool_prompt(states, mask, torch.tensor([[5, 6, 7]]))
    with pytest.raises(ValueError, match="read the prompt's token ids"):
        mirrored_heads(base).pool_prompt(states, mask)


def test_mirrored_heads_generate_and_round_trip(tiny, chat_batch, tmp_path):
    base, tokenizer = tiny
    model = AutoDecoModel(base, HeadsConfig(**OPTIONS, negation_scope=True, negation_tokens=negation_token_table(tokenizer)))
    model.heads.load_state_dict(mirrored_heads(base).state_dict())
    model.eval()
    out = model(**chat_batch)
    model.save_pretrained(tmp_path / "heads")
    loaded = AutoDecoModel.from_pretrained(tmp_path / "heads", base_model=base).eval()
    assert loaded.heads.config.negation_tokens == model.heads.config.negation_tokens
    torch.testing.assert_close(loaded(**chat_batch).temperature, out.temperature)
    generated = loaded.generate(**chat_batch, max_new_tokens=3, do_sample=True)
    assert generated.shape[1] == chat_batch["input_ids"].shape[1] + 3
