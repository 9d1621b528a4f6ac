import math

import pytest

from gradus.curriculum.budget import make_budget_schedule
from gradus.curriculum.filters import AccuracyBand, NonZeroStd


def test_accuracy_band_inclusive_edges():
    band = AccuracyBand(0.25, 0.75)
    assert band.keep([True, False, False, False], [1, 0, 0, 0])  # 0.25
    assert band.keep([True, True, True, False], [1, 1, 1, 0])  # 0.75
    assert not band.keep([False] * 4, [0] * 4)
    assert not band.keep([True] * 4, [1] * 4)
    assert not band.keep([], [])


def test_nonzero_std():
    assert NonZeroStd().keep([True, False], [1.0, 0.0])
    assert not NonZeroStd().keep([True, True], [0.5, 0.5])
    assert NonZeroStd().keep([False, False], [0.0, -0.25])  # correctness equal, rewards not
    assert not NonZeroStd().keep([True], [1.0])


def test_constant_and_exponential():
    assert make_budget_schedule("constant", budget=64)(1000) == 64
    exp = make_budget_schedule("exponential", initial=100, decay=0.5, every=10, minimum=20)
    assert [exp(s) for s in (0, 9, 10, 19, 20, 30, 100)] == [100, 100, 50, 50, 25, 20, 20]
    odd = make_budget_schedule("exponential", initial=99, decay=0.9, every=3, minimum=1)
    assert odd(7) == math.floor(99 * 0.9**2)


def test_linear():
    lin = make_budget_schedule("linear", initial=100, final=50, steps=10)
    assert [lin(s) for s in (0, 1, 5, 10, 20)] == [100, 95, 75, 50, 50]
    assert make_budget_schedule("linear", initial=10, final=13, steps=4)(1) == round(10.75)


def test_cyclic():
    cyc = make_budget_schedule("cyclic", low=32, high=128, period=4)
    assert [cyc(s) for s in range(9)] == [128, 128, 32, 32, 128, 128, 32, 32, 128]


def test_unknown_schedule_suggests():
    with pytest.raises(KeyError, match="did you mean 'linear'"):
        make_budget_schedule("lineer", initial=1, final=2, steps=3)
