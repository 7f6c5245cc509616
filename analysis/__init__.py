"""Statistics, figures and the report of steerdeco's command-obedience experiments.

Input everywhere: a pandas DataFrame of *variant scores*, one row per measured variant instance
(schema in :mod:`analysis.schema`; :mod:`analysis.collect` produces it from a model).

* :mod:`analysis.consistency`: paired effects, consistency, CIs, tests, breakdowns, dose-response,
  Markdown formatting, :func:`~analysis.synthetic.synthetic_scores`;
* :mod:`analysis.trajectories`: per-token trajectories and position-binned means;
* :mod:`analysis.text_effects`: distinct-n, self-BLEU, compression and length of free-running texts,
  and the text-level steering measures (:func:`~analysis.text_effects.text_measures`);
* :mod:`analysis.steering`: the parameter-level steering measures of ``MEASURES.md`` per command split;
* :mod:`analysis.scorecard`: the targets of issues 12 and 16 against the measured values;
* :mod:`analysis.decomposition`: constant shift vs token-level change (teacher-forced);
* :mod:`analysis.plots`: PNG figures (matplotlib imported lazily, Agg canvas);
* :mod:`analysis.report`: the ``results/`` folder (tables, figures, ``report.md``);
* :mod:`analysis.scores_io`: raw variant scores as JSON Lines (save, load, a results folder's scores);
* :mod:`analysis.cli`: ``python -m analysis`` (model + control data -> results folder) and
  :func:`~analysis.cli.run_analysis` for a model already in memory;
* :mod:`analysis.notebook`: what the notebooks in ``notebooks/`` load and show.

Importing this package has no side effects and imports neither torch nor matplotlib.
"""

from .cli import run_analysis
from .decomposition import decompose_shift, decomposition, decomposition_summary
from .effects import breakdowns, consistency_table, dose_response, effect_table, paired_differences
from .formatting import format_consistency_table, format_stats_table, markdown_table
from .report import analyse, write_report
from .schema import add_means, validate_scores
from .scorecard import scorecard, steering_measures
from .scores_io import load_results, load_scores, save_scores
from .statistics import paired_stats
from .steering import parameter_measures, seen_targets
from .synthetic import synthetic_scores
from .text_effects import compression_ratio, distinct_n, self_bleu, text_effects, text_measures
from .trajectories import binned_trajectories, select_trajectory

__all__ = [
    "add_means",
    "analyse",
    "binned_trajectories",
    "breakdowns",
    "compression_ratio",
    "consistency_table",
    "decompose_shift",
    "decomposition",
    "decomposition_summary",
    "distinct_n",
    "dose_response",
    "effect_table",
    "format_consistency_table",
    "format_stats_table",
    "load_results",
    "load_scores",
    "markdown_table",
    "paired_differences",
    "paired_stats",
    "parameter_measures",
    "run_analysis",
    "save_scores",
    "scorecard",
    "seen_targets",
    "select_trajectory",
    "self_bleu",
    "steering_measures",
    "synthetic_scores",
    "text_effects",
    "text_measures",
    "validate_scores",
    "write_report",
]
