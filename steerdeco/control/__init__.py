"""Control data: prompts under randomness commands (none / low / high / placebo) sharing one response.

* :mod:`.commands`: the command library (schema, loading, validation);
* :mod:`.prompts`: prompt sources (the project's set, user JSONL, MT-Bench, GSM8K);
* :mod:`.insertion`: where a command goes (before / after the prompt, system message);
* :mod:`.variants`: the prompt-level split and the variants of each group;
* :mod:`.responses`: shared responses, generated greedily and resumably;
* :mod:`.output`: atomic writing and the summary (the rows' contract and reader: :mod:`steerdeco.rows`);
* :mod:`.build`: one build end to end (what ``python -m steerdeco.build_control_data`` runs).

``docs/control_data.md`` documents the command-file schema and the row schema.
"""

from ..errors import ControlDataError
from ..rows import COLUMNS, PROMPT_SPLITS, VARIANTS, features, load_control_data
from .build import BuildConfig, BuildResult, build_control_data
from .commands import Command, CommandLibrary, default_commands_path, load_commands, parse_commands
from .insertion import PLACEMENTS, insert_command
from .output import summarize
from .prompts import Prompt, load_gsm8k, load_mtbench, load_prompt_file, load_prompts
from .responses import generate_responses, greedy_generate, load_model
from .variants import assign_splits, plan_rows

__all__ = [
    "COLUMNS",
    "PLACEMENTS",
    "PROMPT_SPLITS",
    "VARIANTS",
    "BuildConfig",
    "BuildResult",
    "Command",
    "CommandLibrary",
    "ControlDataError",
    "Prompt",
    "assign_splits",
    "build_control_data",
    "default_commands_path",
    "features",
    "generate_responses",
    "greedy_generate",
    "insert_command",
    "load_commands",
    "load_control_data",
    "load_gsm8k",
    "load_model",
    "load_mtbench",
    "load_prompt_file",
    "load_prompts",
    "parse_commands",
    "plan_rows",
    "summarize",
]
