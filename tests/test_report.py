import pytest

from lmrnn.report import Series, curve_series, markdown_table, plot_learning_curves, plot_lines

PNG = b"\x89PNG\r\n\x1a\n"


def records(scale):
    train = [{"event": "train", "step": s, "loss": scale * 5 / s, "grad_norm": scale / s} for s in (10, 20, 30)]
    evals = [{"event": "eval", "split": "validation", "step": s, "ppl": scale * 100 / s, "seconds": s / 10} for s in (15, 30)]
    return train + evals + [{"event": "eval", "split": "test", "step": 30, "ppl": 1.0}]


def test_curve_series_reads_each_curve_and_keeps_the_last_record_of_a_repeated_step():
    resumed = records(1.0) + [{"event": "train", "step": 20, "loss": 0.5, "grad_norm": 2.0}]
    series = curve_series(resumed)
    assert series["val_ppl_by_step"] == ([15, 30], [100 / 15, 100 / 30])  # the test eval is not a val point
    assert series["val_ppl_by_seconds"] == ([1.5, 3.0], [100 / 15, 100 / 30])
    assert series["train_loss"] == ([10, 20, 30], [0.5, 0.5, 5 / 30])
    assert series["grad_norm"][1] == [0.1, 2.0, 1 / 30]


def test_learning_curve_plot_is_a_png_with_one_line_per_run(tmp_path):
    path = tmp_path / "sub" / "curves.png"
    fig = plot_learning_curves([("a", "lstm", records(1.0)), ("b", "gru", records(2.0))], path)
    assert path.read_bytes().startswith(PNG)
    assert [ax.get_title() for ax in fig.axes] == ["validation perplexity", "validation perplexity against time",
                                                   "training loss", "gradient norm before clipping"]
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["a", "b"]
    assert list(lines[1].get_ydata()) == pytest.approx([200 / 15, 200 / 30])
    assert lines[0].get_color() != lines[1].get_color()


def test_lines_of_a_group_share_a_colour_and_variants_are_dashed(tmp_path):
    fig = plot_lines([Series("lstm", [1, 2], [1.0, 0.1], "lstm"), Series("lstm init", [1, 2], [1.0, 0.01], "lstm", True),
                      Series("gru", [1, 2], [1.0, 0.5], "gru")], tmp_path / "p.png", "t", "x", "y", logy=True)
    a, b, c = fig.axes[0].get_lines()
    assert a.get_color() == b.get_color() != c.get_color()
    assert (a.get_linestyle(), b.get_linestyle()) == ("-", "--")
    assert fig.axes[0].get_yscale() == "log"


def test_markdown_table():
    assert markdown_table(["cell", "ppl"], [["rnn", "3.0"]]) == "| cell | ppl |\n|---|---:|\n| rnn | 3.0 |\n"
