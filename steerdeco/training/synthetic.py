"""A small synthetic control data set with the schema of ``steerdeco.build_control_data``, for tests,
quick experiments and benchmarks when no real control data is at hand.

Every prompt forms a group: one no-command row, graded low/high commands with train and held-out
phrasings, an absolute-target command ("no randomness" -> 0.0), a placebo command and two commands
that name a value (variant ``named``: a temperature, a top-p), all sharing one response.
"""

from __future__ import annotations

PROMPTS = [
    "Write a short poem about the sea at night.",
    "Explain why the sky is blue.",
    "What is the capital of France?",
    "Solve 12 times 7.",
    "List three facts about volcanoes.",
    "Describe a small robot that learns to paint.",
    "Give advice for a first day at a new job.",
    "Tell a story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe a busy market in the morning.",
    "Why do leaves change colour in autumn?",
    "Write a haiku about snow.",
]

RESPONSES = [
    "The quick brown fox jumps over the lazy dog. Once upon a time, a small robot learned to paint the stars.",
    "The capital of France is Paris. Temperature and top-p control how random the sampling is.",
    "Solve 12 times 7. The answer is 84. List three facts about volcanoes: they erupt, they form islands.",
    "Let your imagination run free and explore unusual ideas. Give a deterministic, precise and focused answer.",
]

# (command_id, variant, level, command_split, text, target_temperature, target_top_p)
COMMANDS = [
    ("low-1-a", "low", 1, "train", "Please answer with a little less randomness.", None, None),
    ("low-2-a", "low", 2, "train", "Give a deterministic, precise and focused answer.", None, None),
    ("low-3-abs", "low", 3, "train", "Answer with no randomness at all.", 0.0, None),
    ("low-1-b", "low", 1, "heldout", "Be slightly more careful and predictable.", None, None),
    ("high-1-a", "high", 1, "train", "Be a little more creative than usual.", None, None),
    ("high-2-a", "high", 2, "train", "Be wildly creative and surprising in your answer.", None, None),
    ("high-1-b", "high", 1, "heldout", "Let your imagination run a bit freer.", None, None),
    ("placebo-a", "placebo", 0, "train", "Answer in English and use a friendly tone.", None, None),
    ("named-t", "named", 0, "train", "Use a temperature of 1.6.", 1.6, None),
    ("named-p", "named", 0, "train", "Use top-p 0.3.", None, 0.3),
]


def synthetic_control_records(num_prompts: int = 6, num_eval_prompts: int = 2, response_repeats: int = 1) -> list[dict]:
    """Rows as dicts (see the module docstring); the last ``num_eval_prompts`` prompts have ``split == "eval"``."""
    if not 1 <= num_prompts <= len(PROMPTS):
        raise ValueError(f"num_prompts must be in [1, {len(PROMPTS)}], got {num_prompts}")
    if not 0 <= num_eval_prompts < num_prompts:
        raise ValueError(f"num_eval_prompts must be in [0, num_prompts), got {num_eval_prompts}")
    records = []
    for p, prompt in enumerate(PROMPTS[:num_prompts]):
        split = "eval" if p >= num_prompts - num_eval_prompts else "train"
        response = " ".join([RESPONSES[p % len(RESPONSES)]] * response_repeats)
        variants = [("none", "none", 0, None, None, None, None), *COMMANDS]
        for command_id, variant, level, command_split, command, target, target_top_p in variants:
            content = prompt if command is None else f"{command} {prompt}"
            records.append(
                {
                    "group_id": f"p{p}",
                    "prompt_id": f"p{p}",
                    "variant": variant,
                    "level": level,
                    "target_temperature": target,
                    "target_top_p": target_top_p,
                    "command_id": command_id,
                    "command_split": command_split,
                    "placement": "prefix" if command else "none",
                    "split": split,
                    "messages": [{"role": "user", "content": content}],
                    "command": command,
                    "response": response,
                }
            )
    return records


def synthetic_control_rows(num_prompts: int = 6, num_eval_prompts: int = 2, response_repeats: int = 1):
    """:func:`synthetic_control_records` as a ``datasets.Dataset``."""
    import datasets

    return datasets.Dataset.from_list(synthetic_control_records(num_prompts, num_eval_prompts, response_repeats))
