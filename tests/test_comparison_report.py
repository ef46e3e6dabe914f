import math

from lmrnn.comparison_report import budget_text, report_markdown, rungs_inside_warmup, shared_runs, table_rows
from lmrnn.significance import pairwise, summarise


def results(minutes=0.0, steps=100, others=(0.0, 0.0, 0.0, 0.0), seeds=(1, 2)):
    runs = []
    for index, (cell, ppl) in enumerate((("rnn", 200.0), ("rnn", 210.0), ("gru", 150.0), ("gru", 152.0))):
        runs.append({"run": f"cmp/{cell}-seed{seeds[index % len(seeds)]}", "cell": cell, "compared_as": cell,
                     "lr": 0.002, "train_tokens": 2240 * steps, "best_val_ppl": ppl, "test_ppl": ppl,
                     "test_word_ppl": ppl, "test_bits_per_byte": 1.5, "train_tokens_per_second": 7000.0,
                     "wall_seconds": 60.0, "others_cpu_share": others[index]})
    runs = runs if len(seeds) > 1 else runs[::2]
    config = {"train.max_steps": steps, "train.max_minutes": minutes, "train.epochs": 0, "train.batch_size": 64,
              "train.bptt": 35, "train.optimizer": "adamw", "train.lr": 0.0, "train.lr_schedule": "cosine",
              "train.clip_grad_norm": 1.0, "model.num_layers": 2, "model.embedding_dim": 256, "model.dropout": 0.3,
              "tokenizer.model_type": "word"}
    per_cell = {cell: {key: summarise([float(r[key]) for r in runs if r["cell"] == cell]) for key in (
        "best_val_ppl", "test_ppl", "test_word_ppl", "test_bits_per_byte", "train_tokens_per_second", "wall_seconds")}
        for cell in ("rnn", "gru")}
    return {"corpus": "ptb", "vocab_size": 10000, "match": "params", "reference": "rnn", "cells": ["rnn", "gru"],
            "seeds": list(seeds), "hidden_sizes": {"rnn": 513, "gru": 289}, "params": {"rnn": 3_620_000, "gru": 3_610_000},
            "config": config, "per_cell": per_cell, "runs": runs,
            "differences": pairwise({c: [math.log(r["test_ppl"]) for r in runs if r["cell"] == c] for c in ("rnn", "gru")})}


def test_the_report_states_the_budget_and_what_it_equalises():
    assert budget_text(results(steps=100)) == "max_steps 100, whichever comes first; equal steps and tokens: 224,000 training tokens each"
    timed = results(minutes=8.0, steps=0)
    assert budget_text(timed).startswith("8 minutes of training per run (equal wall time")


def test_runs_that_shared_the_machine_are_flagged():
    plain = results()
    assert not shared_runs(plain) and "Shared the machine" not in report_markdown(plain)
    busy = results(others=(0.0, 0.45, 0.0, 0.02))
    assert [r["run"] for r in shared_runs(busy)] == ["cmp/rnn-seed2"]
    rnn_row, gru_row = table_rows(busy)
    assert rnn_row[9].endswith(" *") and not gru_row[9].endswith("*")
    assert "other work took 45% of the CPU time during rnn-seed2" in report_markdown(busy)


def test_the_report_says_which_differences_the_seeds_resolve():
    report = report_markdown(results())
    assert "## Differences" in report and "| gru | rnn |" in report and "| yes |" in report
    rnn_row = table_rows(results())[0]
    assert rnn_row[3] == "0.002" and rnn_row[6] == "205.00 ± 7.07" and " – " in rnn_row[7]  # the 95% interval
    one_seed = report_markdown(results(seeds=(1,)))
    assert "One seed per cell: no interval, so no difference is resolved." in one_seed and "(one seed: no spread)" in one_seed


def test_a_choice_at_the_edge_of_the_searched_range_is_flagged():
    """The LSTM of the tuned PTB comparison chose 2.8e-2, the highest rate tried: the search did
    not bracket its best, so the report says so rather than rank on it."""
    tuned = results()
    trials = [{"trial": k, "train.lr": lr, "val_ppl": 300.0 - k, "budget": 1 / 3, "val_ppl_by_rung": [400.0, 300.0 - k]}
              for k, lr in enumerate((1e-3, 3e-3, 1e-2, 2.8e-2))]
    tuned["tuning"] = {"gru": {"best": {"train.lr": 3e-3}, "best_trial": 1, "trials": trials},
                       "rnn": {"best": {"train.lr": 2.8e-2}, "best_trial": 3, "trials": trials}}
    tuned["tuning_plan"] = {"knobs": [{"key": "train.lr", "low": 1e-4, "high": 3e-2, "log": True}], "trials": 4,
                            "eta": 3, "rungs": [[1 / 3, 4], [1.0, 1]], "seed": 3}
    report = report_markdown(tuned)
    assert "rnn's train.lr 0.028 is the highest value tried" in report and "gru's" not in report.split("edge")[1]
    assert "| rnn | train.lr 0.028 | 297.00 at 0.333 | 0 |" in report


def test_a_first_rung_that_ends_inside_the_warm_up_is_flagged():
    """The first tuned PTB comparison judged its rates at step 87 of a 200-step warm-up, where a
    higher peak rate is simply further along: the report says so."""
    tuned = results()
    tuned["config"]["train.warmup_steps"] = 200
    trials = [{"trial": k, "train.lr": lr, "val_ppl": 300.0, "budget": 1 / 3, "val_ppl_by_rung": [400.0, 300.0],
               "steps_by_rung": [steps, 3 * steps]} for k, (lr, steps) in enumerate(((1e-3, 90), (1e-2, 87)))]
    trials.append({"trial": 2, "train.lr": 3e-2, "val_ppl": None, "budget": 1 / 9, "val_ppl_by_rung": [None],
                   "steps_by_rung": [None]})  # diverged: no steps
    tuned["tuning"] = {"rnn": {"best": {"train.lr": 1e-2}, "best_trial": 1, "trials": trials}}
    tuned["tuning_plan"] = {"knobs": [{"key": "train.lr", "low": 1e-4, "high": 3e-2, "log": True}], "trials": 3,
                            "eta": 3, "rungs": [[1 / 3, 3]], "seed": 3}
    assert rungs_inside_warmup(tuned) == ["rnn's at step 87 of a 200-step warm-up"]
    assert "The first rung ended inside the warm-up" in report_markdown(tuned)
    tuned["config"]["train.warmup_steps"] = 50
    assert not rungs_inside_warmup(tuned) and "inside the warm-up" not in report_markdown(tuned)
    del trials[0]["steps_by_rung"], trials[1]["steps_by_rung"]  # a search recorded before steps were
    assert not rungs_inside_warmup(tuned)
