"""analysis.probe: the readout learns the commands it was fitted on, and bad input gets a clear error (tiny model)."""

import math

import numpy as np
import pytest

from analysis.probe import (
    fit_probe,
    level_values,
    main,
    probe_levels,
    probe_measures,
    probe_targets,
    prompt_states,
)
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.training.synthetic import synthetic_control_rows


@pytest.fixture(scope="module")
def rows():
    return [dict(r) for r in synthetic_control_rows(num_prompts=8, num_eval_prompts=4)]


def test_targets_are_the_commanded_log_ratios(rows):
    targets = probe_targets(rows)
    for row, target in zip(rows, targets, strict=True):
        if row["variant"] in ("none", "placebo"):
            assert target == 0.0
        elif row["variant"] == "low":
            assert target == pytest.approx(math.log((0.7, 0.4, 0.05)[int(row["level"]) - 1]))
        elif row["variant"] == "high":
            assert target == pytest.approx(math.log((1.4, 1.9, 2.6)[int(row["level"]) - 1]))


def test_a_fitted_probe_reads_train_wordings_on_held_out_prompts(rows):
    model, tokenizer = tiny_model_and_tokenizer()
    states, lengths = prompt_states(model, tokenizer, rows, layer=1, batch_size=8, progress=False)
    assert states.shape[0] == len(rows) and int(lengths.max()) == states.shape[1]
    targets = probe_targets(rows)
    train = np.array([r["split"] == "train" for r in rows])
    fitted = probe_measures(rows, fit_probe(states, lengths, targets, train, seed=0, epochs=60, learning_rate=3e-3))
    untrained = probe_measures(rows, fit_probe(states, lengths, targets, train, seed=0, epochs=0))
    assert fitted["train"]["single_command"] >= 0.9
    assert fitted["train"]["single_command"] > untrained["train"]["single_command"]


def test_a_layer_the_model_lacks_is_named(rows):
    model, tokenizer = tiny_model_and_tokenizer()
    with pytest.raises(ValueError, match="--layers: 99 is not a decoder layer"):
        prompt_states(model, tokenizer, rows, layer=99, progress=False)


def test_the_cli_refuses_a_missing_data_folder_and_an_existing_output(tmp_path):
    with pytest.raises(SystemExit, match="--data: "):
        main(["--data", str(tmp_path / "nothing"), "--model", "tiny"])
    out = tmp_path / "probe.json"
    out.write_text("{}")
    with pytest.raises(SystemExit, match="exists"):
        main(["--data", str(tmp_path / "nothing"), "--model", "tiny", "--out", str(out)])


def test_the_cli_probes_each_layer_and_seed_and_writes_the_measures(rows, tmp_path, capsys):
    import json

    data = tmp_path / "control_data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "probe.json"
    results = main(["--data", str(data), "--model", "tiny", "--layers", "1", "2", "--seeds", "0", "1", "--epochs", "2",
                    "--out", str(out)])
    assert sorted(results) == ["layer 1, seed 0", "layer 1, seed 1", "layer 2, seed 0", "layer 2, seed 1"]
    assert json.loads(out.read_text()) == results
    assert "layer 2 seed 1 [train wordings] single_command" in capsys.readouterr().out


def test_a_level_readout_classifies_each_row_and_predicts_its_levels_log_ratio(rows):
    classes = probe_levels(rows, 3)
    for row, level in zip(rows, classes, strict=True):
        expected = {"low": 3 - int(row["level"] or 0), "high": 3 + int(row["level"] or 0)}.get(row["variant"], 3)
        assert level == expected  # no command, placebo and named rows: "none"
    values = level_values()
    assert values[3] == 0.0 and values[0] == pytest.approx(math.log(0.05)) and values[-1] == pytest.approx(math.log(2.6))
    model, tokenizer = tiny_model_and_tokenizer()
    states, lengths = prompt_states(model, tokenizer, rows, layer=1, batch_size=8, progress=False)
    targets = probe_targets(rows)
    train = np.array([r["split"] == "train" for r in rows])
    predictions = fit_probe(states, lengths, targets, train, seed=0, epochs=60, learning_rate=3e-3, levels=classes,
                            values=values)
    assert predictions.min() >= values.min() - 1e-6 and predictions.max() <= values.max() + 1e-6  # a mean of the levels
    predictions[np.array([r["variant"] == "named" for r in rows])] = np.nan
    measures = probe_measures(rows, predictions)
    assert measures["train"]["single_command"] >= 0.9
    assert measures["train"]["named_temperature_on_target"] is None  # the level readout reads no value
    with pytest.raises(ValueError, match="needs both the rows' levels and the levels' values"):
        fit_probe(states, lengths, targets, train, levels=classes)


def test_the_cli_fits_a_level_readout_on_request(rows, tmp_path, capsys):
    import json

    data = tmp_path / "control_data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = main(["--data", str(data), "--model", "tiny", "--readout", "levels", "--layers", "1", "--epochs", "2"])
    assert all(m["named_temperature_on_target"] is None for m in results["layer 1, seed 0"].values())
    assert "named_temperature_on_target" not in capsys.readouterr().out
