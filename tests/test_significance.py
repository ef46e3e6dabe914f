import math

import pytest

from lmrnn.significance import difference, pairwise, summarise, t_quantile


def test_t_quantiles_match_the_printed_table():
    # Student's t, two-sided 95% (any statistics table): df 1, 2, 4, 30
    for dof, value in ((1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042)):
        assert t_quantile(dof) == pytest.approx(value, abs=1e-3)


def test_summary_interval_by_hand():
    stats = summarise([10.0, 12.0, 14.0])  # mean 12, sd 2
    assert (stats["mean"], stats["sd"], stats["n"]) == (12.0, 2.0, 3)
    assert stats["ci95"] == pytest.approx(4.303 * 2 / math.sqrt(3), rel=1e-3)
    assert summarise([5.0])["ci95"] is None and summarise([5.0])["sd"] == 0.0


def test_welch_difference_by_hand():
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]  # variances 1 and 4, n 3 each
    va, vb = 1 / 3, 4 / 3
    dof = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)  # 2.94
    half = t_quantile(dof) * math.sqrt(va + vb)
    d = difference(a, b)
    assert d["difference"] == -4.0 and d["low"] == pytest.approx(-4 - half) and d["high"] == pytest.approx(-4 + half)
    assert d["resolved"] == (half < 4)
    assert not difference([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])["resolved"]  # within the seeds' spread
    assert difference([1.0, 1.0], [2.0, 2.0]) == {"difference": -1.0, "low": -1.0, "high": -1.0, "resolved": True}
    assert not difference([1.0], [3.0])["resolved"]  # one seed: nothing resolved


def test_pairwise_names_the_better_cell_first():
    rows = pairwise({"rnn": [5.0, 5.1, 5.2], "lstm": [4.0, 4.1, 4.2], "gru": [4.05, 4.15, 4.25]})
    assert [(r["better"], r["worse"]) for r in rows] == [("lstm", "rnn"), ("gru", "rnn"), ("lstm", "gru")]
    assert [r["resolved"] for r in rows] == [True, True, False]
