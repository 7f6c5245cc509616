"""Tests of steerdeco.errors: one exception family, each member a ValueError and importable where it was."""

import pytest

from steerdeco.errors import AnalysisError, ControlDataError, SteerdecoError


@pytest.mark.parametrize("error", [ControlDataError, AnalysisError])
def test_every_wing_error_is_a_steerdeco_error_and_a_value_error(error):
    assert issubclass(error, SteerdecoError) and issubclass(error, ValueError)
    with pytest.raises(SteerdecoError, match="names the fix"):
        raise error("names the fix")


def test_the_control_data_error_is_still_importable_from_the_control_package():
    from steerdeco.control import ControlDataError as from_control

    assert from_control is ControlDataError
