"""Tests of analysis.options: AnalysisConfig refuses bad option values, naming the flag."""

from __future__ import annotations

import pytest

from steerdeco.errors import AnalysisError


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"free_running_variants": "low3,medium"}, "--free-running-variants: unknown variant selector 'medium'"),
        ({"prompt_only_temperature": 0}, "--prompt-only-temperature must be a number > 0"),
        ({"prompt_only": "yes"}, "--prompt-only must be true or false"),
    ],
)
def test_new_options_are_checked(options, match):
    from analysis.options import AnalysisConfig

    with pytest.raises(AnalysisError, match=match):
        AnalysisConfig(heads="h", data="d", **options)
