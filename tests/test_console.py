from lmrnn.console import BAR_COLUMNS, fit_status

LINE = "step   12345 | epoch  0.22 | lr 8.7e-03 | loss 4.567 | ppl    96.22 | |g| 0.53 | 13.9k tok/s"


def test_the_progress_status_fits_the_terminal_dropping_the_least_needed_fields():
    """At 120 columns the end of the line was cut to '0:… ETA 0:0…'; now fields go first."""
    wide = fit_status(LINE, 160 - BAR_COLUMNS)
    assert wide == "step 12345 | epoch 0.22 | lr 8.7e-03 | loss 4.567 | ppl 96.22 | |g| 0.53 | 13.9k tok/s"
    assert fit_status(LINE, 120 - BAR_COLUMNS) == "step 12345 | epoch 0.22 | lr 8.7e-03 | loss 4.567 | ppl 96.22 | 13.9k tok/s"
    assert fit_status(LINE, 80 - BAR_COLUMNS) == "step 12345 | loss 4.567 | 13.9k tok/s"  # step, loss, tokens/s
    for width in range(0, 120):
        assert len(fit_status(LINE, width)) <= width
