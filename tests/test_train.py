import json
import math
import os
import signal

import pytest
import torch
import yaml

from lmrnn import checkpoint
from lmrnn.config import TrainConfig, load_config
from lmrnn.console import TrainingProgress
from lmrnn.errors import UserError
from lmrnn.train import budget_progress, learning_rate, train
from tests.conftest import REPO

QUIET = TrainingProgress(enabled=False)


def tiny_cfg(corpus, *overrides):
    return load_config(REPO / "configs" / "tiny.yaml", [f"data.source={corpus}", "device=cpu", *overrides])


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


def test_a_run_directory_is_complete_and_consistent(tiny_run):
    assert sorted(p.name for p in tiny_run.iterdir()) == sorted(checkpoint.RUN_FILES)
    summary = json.loads((tiny_run / "summary.json").read_text())
    for key in ("cell", "params", "steps", "train_tokens", "train_seconds", "train_tokens_per_second",
                "best_val_ppl", "test_ppl", "test_word_ppl", "test_bits_per_byte"):
        assert key in summary
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert summary["steps"] == 40 and summary["train_tokens"] == 40 * 8 * 16
    assert cfg["model"]["vocab_size"] == 300
    assert summary["best_val_ppl"] < 0.5 * 300  # learned something: uniform would be 300
    events = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval" and e["split"] == "validation"]
    assert [e["step"] for e in evals] == [10, 20, 30, 40]
    assert min(e["ppl"] for e in evals) == pytest.approx(summary["best_val_ppl"])
    assert all(e["grad_norm"] > 0 for e in events if e["event"] == "train")


def test_interrupt_then_resume_matches_an_uninterrupted_run(corpus_dir, tmp_path, monkeypatch):
    """Ctrl-C at step 13 stops after that step; --resume then ends with the same weights,
    bit for bit, as a run that was never stopped (stream position, hidden state, RNG, schedule)."""
    cfg = ["model.dropout=0.2", "train.max_steps=24", "train.eval_every=0", "train.save_every=0", "train.log_every=1"]
    train(tiny_cfg(corpus_dir, *cfg), tmp_path / "straight", progress=QUIET)

    append = checkpoint.append_metrics

    def interrupt_at_13(run_dir, record):
        append(run_dir, record)
        if record.get("event") == "train" and record["step"] == 13:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(checkpoint, "append_metrics", interrupt_at_13)
    stopped = train(tiny_cfg(corpus_dir, *cfg), tmp_path / "stopped", progress=QUIET)
    monkeypatch.setattr(checkpoint, "append_metrics", append)
    assert stopped["stopped_by"] == "interrupt" and stopped["steps"] == 13
    resumed = train(checkpoint.resume_config(tmp_path / "stopped", [], {}), tmp_path / "stopped", resume=True,
                    progress=QUIET)
    assert resumed["steps"] == 24
    a = checkpoint.load_train_state(tmp_path / "straight")["model"]
    b = checkpoint.load_train_state(tmp_path / "stopped")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_finished_run_until_the_budget_grows(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    with pytest.raises(UserError, match="already reached its stop limit"):
        train(checkpoint.resume_config(run, [], {}), run, resume=True, progress=QUIET)
    summary = train(checkpoint.resume_config(run, ["train.max_steps=45"], {}), run, resume=True, progress=QUIET)
    assert summary["steps"] == 45


@pytest.mark.parametrize("override, message", [
    ("train.bptt=5000", "too few for train.batch_size=8 rows of train.bptt=5000"),
    ("tokenizer.vocab_size=100", "too small for this corpus"),
])
def test_impossible_settings_fail_before_writing(corpus_dir, tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        train(tiny_cfg(corpus_dir, override), tmp_path / "run", progress=QUIET)
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_kept_unless_overwritten(tiny_run, tmp_path, corpus_dir):
    before = (tiny_run / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny_cfg(corpus_dir), tiny_run, progress=QUIET)
    assert (tiny_run / "model.safetensors").read_bytes() == before


def test_clipping_off_and_sgd_still_train(corpus_dir, tmp_path):
    summary = train(tiny_cfg(corpus_dir, "train.clip_grad_norm=0", "train.optimizer=sgd", "train.lr=1.0",
                             "train.lr_schedule=plateau", "train.max_steps=10"), tmp_path / "run", progress=QUIET)
    assert math.isfinite(summary["test_ppl"]) and summary["steps"] == 10
