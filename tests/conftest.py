import pytest
import torch

from steerdeco.rows import select_split
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.training.synthetic import synthetic_control_rows


@pytest.fixture
def tiny():
    """A fresh tiny Llama (hidden 64, 2 layers) and its ChatML tokenizer."""
    return tiny_model_and_tokenizer(arch="llama", seed=0)


@pytest.fixture
def chat_batch(tiny):
    """Two left-padded chat prompts of different lengths."""
    _, tokenizer = tiny
    conversations = [
        [{"role": "user", "content": "hello there"}],
        [{"role": "user", "content": "Write a short poem about the sea at night, please."}],
    ]
    return tokenizer.apply_chat_template(
        conversations, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one thread; several threads fight over busy CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def control_rows():
    """Synthetic control rows: 6 prompts (4 train, 2 eval) under every command variant."""
    return synthetic_control_rows(num_prompts=6, num_eval_prompts=2)


@pytest.fixture(scope="module")
def train_rows(control_rows):
    return select_split(control_rows, "train")


@pytest.fixture(scope="module")
def eval_rows(control_rows):
    return select_split(control_rows, "eval")


@pytest.fixture(scope="module")
def planted():
    """Analysis scores with planted effects: low shifts T by -0.3, high by +0.3, placebo by 0 (noise sd 0.05), 60 groups."""
    from analysis_helpers import planted_scores

    return planted_scores()
