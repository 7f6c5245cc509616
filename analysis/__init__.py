"""Statistics, figures and the report of steerdeco's command-obedience experiments.

Input everywhere: a pandas DataFrame of *variant scores*, one row per measured variant instance
(schema in :mod:`analysis.schema`; :mod:`analysis.collect` produces it from a model).

* :mod:`analysis.schema`: the variant-scores schema, its checks and per-row means;
* :mod:`analysis.statistics`: paired statistics (bootstrap CIs, sign and Wilcoxon tests, effect sizes);
* :mod:`analysis.effects`: effect, consistency, breakdown and dose-response tables;
* :mod:`analysis.formatting`: numbers, CIs and tables as Markdown;
* :mod:`analysis.synthetic`: seeded synthetic scores with planted effects;
* :mod:`analysis.trajectories`: per-token trajectories and position-binned means;
* :mod:`analysis.text_effects`: distinct-n, self-BLEU, compression and length of free-running texts,
  and the text-level steering measures (:func:`~analysis.text_effects.text_measures`);
* :mod:`analysis.steering`: the parameter-level steering measures of ``MEASURES.md`` per command split;
* :mod:`analysis.scorecard`: the targets of issues 12 and 16 against the measured values;
* :mod:`analysis.decomposition`: constant shift vs token-level change (teacher-forced);
* :mod:`analysis.plots`: PNG figures (matplotlib imported lazily, Agg canvas);
* :mod:`analysis.report`: the report (tables, figures, ``report.md``) of some scores;
* :mod:`analysis.scores_io`: raw variant scores as JSON Lines (save, load, a results folder's scores);
* :mod:`analysis.collect`: scores from a model (teacher-forced, free-running, prompt-only);
* :mod:`analysis.options`, :mod:`analysis.model`, :mod:`analysis.data`, :mod:`analysis.scoring`,
  :mod:`analysis.results`: one analysis run's options, model, rows, scoring and results folder;
* :mod:`analysis.api`: :func:`~analysis.api.run_analysis` (a model in memory) and
  :func:`~analysis.api.run` (an :class:`~analysis.options.AnalysisConfig`);
* :mod:`analysis.cli`: ``python -m analysis`` (parses, calls :func:`~analysis.api.run`, prints);
* :mod:`analysis.notebook`: what the notebooks in ``notebooks/`` load and show.
* :mod:`analysis.sample`: ``python -m analysis.sample``, one prompt under commands of your own wording;
* :mod:`analysis.probe`: ``python -m analysis.probe``, can a readout tell the command from one layer's prompt states.

Importing this package has no side effects and imports neither torch nor matplotlib.
"""

from .api import run_analysis
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
