"""steerdeco.training.data: rows read from dataset_path, the context normalisation fitted on the training rows."""

import json

import pytest
import torch
from training_setup import config

from steerdeco.training import SteeringTrainer
from steerdeco.training.synthetic import synthetic_control_records


def test_trainer_reads_the_dataset_path_splits(tmp_path):
    path = tmp_path / "control.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_control_records(6, 2)))
    trainer = SteeringTrainer(args=config(tmp_path, dataset_path=str(path)))
    assert set(trainer.train_rows["split"]) == {"train"} and set(trainer.eval_rows["split"]) == {"eval"}
    assert len(trainer.train_dataset) == 4 and len(trainer.eval_dataset) == 2
    with pytest.raises(ValueError, match="give a train_dataset or set dataset_path"):
        SteeringTrainer(args=config(tmp_path))


@pytest.mark.parametrize("cache", [True, False])
def test_trainer_fits_the_context_normalisation_from_the_training_rows(tmp_path, train_rows, cache):
    trainer = SteeringTrainer(args=config(tmp_path, backbone_cache=cache, heads_steering_width=8), train_dataset=train_rows)
    heads = trainer.autodeco_model.heads
    assert not torch.equal(heads.context_scale, torch.ones_like(heads.context_scale))
    assert not torch.equal(heads.context_shift, torch.zeros_like(heads.context_shift))
    assert bool((heads.context_scale > 0).all())
