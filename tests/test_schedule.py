import pytest

from lmrnn.config import TrainConfig
from lmrnn.schedule import budget_progress, learning_rate, window_length


def test_learning_rate_schedules_by_hand():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="cosine", min_lr_ratio=0.1)
    assert [learning_rate(cfg, s, 0.0, 1.0) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert learning_rate(cfg, 10, 0.5, 1.0) == pytest.approx(0.55)  # halfway down the cosine
    assert learning_rate(cfg, 10, 1.0, 1.0) == pytest.approx(0.1)
    flat = TrainConfig(lr=2.0, warmup_steps=0, lr_schedule="plateau")
    assert learning_rate(flat, 10, 0.9, 1 / 16) == 0.125


def test_budget_is_the_nearest_limit():
    cfg = TrainConfig(epochs=4, max_steps=100, max_minutes=2)
    assert budget_progress(cfg, 50, 1.0, 30.0) == 0.5
    assert budget_progress(cfg, 10, 3.0, 30.0) == 0.75
    assert budget_progress(cfg, 10, 0.1, 90.0) == 0.75
    assert budget_progress(TrainConfig(epochs=0, max_steps=8), 2, 5.0, 1e9) == 0.25


def test_variable_window_lengths_follow_merity_and_are_fixed_by_seed_and_step():
    assert {window_length(TrainConfig(bptt=70), 1, step) for step in range(50)} == {70}
    cfg = TrainConfig(bptt=70, variable_bptt=True)
    lengths = [window_length(cfg, 1, step) for step in range(4000)]
    assert lengths == [window_length(cfg, 1, step) for step in range(4000)]  # any rank, any resume
    assert lengths != [window_length(cfg, 2, step) for step in range(4000)]
    assert 5 <= min(lengths) and max(lengths) <= 110
    halves = sum(length < 52 for length in lengths) / len(lengths)  # the bptt / 2 draws: N(35, 5)
    assert 0.03 < halves < 0.07
    full = [length for length in lengths if length >= 52]
    assert abs(sum(full) / len(full) - 69.5) < 0.5  # int() of N(70, 5) rounds towards zero
    assert window_length(TrainConfig(bptt=6, variable_bptt=True), 3, 0) >= 5
