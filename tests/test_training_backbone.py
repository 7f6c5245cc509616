"""steerdeco.training.backbone: the base model read at the response positions (tiny model)."""

import torch
from training_setup import config

from steerdeco.heads import running_context
from steerdeco.training import SteeringTrainer
from steerdeco.training.backbone import backbone_outputs


def test_backbone_outputs_match_a_full_forward_at_the_response_positions(tmp_path, train_rows):
    trainer = SteeringTrainer(args=config(tmp_path, backbone_cache=False, logit_top_k=0), train_dataset=train_rows)
    base = trainer.autodeco_model.base_model
    batch = {k: v.to(base.device) for k, v in next(iter(trainer.get_train_dataloader())).items() if torch.is_tensor(v)}
    hidden, context, slots, logits, *_ = backbone_outputs(
        base, *(batch[k] for k in ("input_ids", "attention_mask", "response_positions", "response_targets", "response_mask")),
        top_k=0, num_bins=1,
    )
    with torch.no_grad():
        full = trainer.autodeco_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    full_context, _ = running_context(full.hidden_states, batch["attention_mask"])
    mask = batch["response_mask"]
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
    positions = batch["response_positions"][mask]
    assert int(positions.min()) > 0  # the prompt positions really were left out of the logits
    torch.testing.assert_close(logits, full.logits[rows, positions], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hidden, full.hidden_states[rows, positions], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(context, full_context[rows, positions], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(slots.target_value, full.logits[rows, positions].gather(-1, batch["response_targets"][mask].unsqueeze(-1)).squeeze(-1), rtol=1e-4, atol=1e-5)