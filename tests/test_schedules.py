import math

import pytest

from gradus.trainer.schedules import lr_multiplier


def test_warmup_then_constant():
    f = lr_multiplier("constant", total=10, warmup=4)
    assert [f(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_linear_and_cosine():
    lin = lr_multiplier("linear", total=10, warmup=2, min_ratio=0.1)
    assert [lin(s) for s in (0, 1, 2, 6, 10, 12)] == pytest.approx([0.5, 1.0, 1.0, 1 - 0.9 * 0.5, 0.1, 0.1])
    cos = lr_multiplier("cosine", total=10, warmup=0, min_ratio=0.0)
    assert [cos(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert cos(2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


def test_wsd():
    f = lr_multiplier("wsd", total=10, warmup=1, min_ratio=0.0, decay_fraction=0.2)
    assert [f(s) for s in range(11)] == pytest.approx([1.0, 1, 1, 1, 1, 1, 1, 1, 1, 0.5, 0.0])


def test_unknown():
    with pytest.raises(ValueError, match="cosine"):
        lr_multiplier("cosin", total=3)
