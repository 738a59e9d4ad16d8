import pytest

from segpipe.errors import SegpipeError
from segpipe.training.schedule import parse_duration, poly_lr, training_progress


def test_parse_duration():
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400 and parse_duration("45") == 45
    with pytest.raises(SegpipeError, match="20m"):
        parse_duration("twenty minutes")


def test_poly_and_progress():
    assert poly_lr(0.01, 0) == 0.01 and poly_lr(0.01, 1) == 0 and poly_lr(0.01, 0.5) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert training_progress(50, 100, 10, None) == 0.5
    assert training_progress(10, None, 30, 60) == 0.5
    assert training_progress(90, 100, 30, 60) == 0.9
