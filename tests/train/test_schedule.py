import pytest

from scalelab.train.schedule import ScheduleConfig, lr_factor


def test_warmup_then_cosine_to_floor():
    config = ScheduleConfig(kind="cosine", warmup_fraction=0.1, min_lr_ratio=0.1)
    factors = [lr_factor(s, 100, config) for s in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(100, 100, config) == pytest.approx(0.1)


def test_warmup_stable_decay():
    config = ScheduleConfig(kind="wsd", warmup_fraction=0.1, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(50, 100, config) == 1.0
    assert lr_factor(79, 100, config) == 1.0
    assert lr_factor(90, 100, config) == pytest.approx(0.5)
    assert lr_factor(100, 100, config) == pytest.approx(0.0)


def test_constant_and_no_warmup():
    config = ScheduleConfig(kind="constant", warmup_fraction=0.0)
    assert {lr_factor(s, 10, config) for s in range(10)} == {1.0}
