import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmrnn import checkpoint
from lmrnn.config_parser import load_config
from lmrnn.console import TrainingProgress
from lmrnn.errors import UserError
from lmrnn.schedule import window_length
from lmrnn.softmax import FullSoftmax
from lmrnn.loop import loss_jumped
from lmrnn.train import train
from tests.conftest import REPO, SHARED_CORPORA

QUIET = TrainingProgress(enabled=False)


def tiny_cfg(corpus, *overrides):
    return load_config(REPO / "configs" / "tiny.yaml", [f"data.source={corpus}", "device=cpu", *overrides])


def test_variable_bptt_scales_the_rate_by_the_window_and_covers_each_epoch_once(corpus_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(corpus_dir, "train.variable_bptt=true", "train.bptt=20", "train.lr_schedule=constant",
                   "train.log_every=1", "train.max_steps=0", "train.epochs=2", "train.eval_every=0", "train.save_every=0")
    summary = train(cfg, run, progress=QUIET)
    columns = summary["train_tokens"] // (2 * cfg.train.batch_size)  # two whole passes over (B, columns)
    expected, position = [], 0
    for step in range(summary["steps"]):  # the windows by hand: each epoch's last one cut at the end
        length = min(window_length(cfg.train, cfg.seed, step), columns - position)
        expected.append(cfg.train.lr * length / 20)
        position = (position + length) % columns
    assert position == 0 and summary["epochs"] == 2.0
    logged = [r["lr"] for r in checkpoint.read_metrics(run) if r["event"] == "train"]
    assert logged == pytest.approx(expected)


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


def test_every_file_of_a_run_and_its_cache_is_readable_as_the_umask_allows(corpus_dir, tmp_path):
    """model.safetensors was written 0600 while the other files were 0644."""
    saved = os.umask(0o022)
    try:
        train(tiny_cfg(corpus_dir, f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=4"), tmp_path / "run",
              progress=QUIET)
    finally:
        os.umask(saved)
    files = [p for folder in (tmp_path / "run", tmp_path / "cache") for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= set(checkpoint.RUN_FILES) and any(p.suffix == ".bin" for p in files)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o644) for p in files}


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
    # the stop saved without validating: the resumed run validated where the straight one did
    validations = [[r["step"] for r in checkpoint.read_metrics(tmp_path / name) if r.get("split") == "validation"]
                   for name in ("straight", "stopped")]
    assert validations[0] == validations[1] == [24]
    assert stopped["best_val_ppl"] is None and stopped["test_ppl"] is None  # stopped before its first validation
    a = checkpoint.load_train_state(tmp_path / "straight")["model"]
    b = checkpoint.load_train_state(tmp_path / "stopped")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a state saved before run format 5 counts windows, not positions, and has no weight average
    old = tmp_path / "old"
    monkeypatch.setattr(checkpoint, "append_metrics", interrupt_at_13)
    train(tiny_cfg(corpus_dir, *cfg), old, progress=QUIET)
    monkeypatch.setattr(checkpoint, "append_metrics", append)
    state = checkpoint.load_train_state(old)
    state["window"] = state.pop("position") // 16  # bptt 16
    del state["average"], state["val_losses"]
    checkpoint.save_train_state(old, state)
    train(checkpoint.resume_config(old, [], {}), old, resume=True, progress=QUIET)
    c = checkpoint.load_train_state(old)["model"]
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_resume_refuses_a_finished_run_until_the_budget_grows(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    with pytest.raises(UserError, match="already reached its stop limit"):
        train(checkpoint.resume_config(run, [], {}), run, resume=True, progress=QUIET)
    summary = train(checkpoint.resume_config(run, ["train.max_steps=45"], {}), run, resume=True, progress=QUIET)
    assert summary["steps"] == 45


def test_a_paused_run_is_untested_and_resumes_into_the_uninterrupted_run(corpus_dir, tmp_path):
    """pause_at (successive halving's rungs): the schedule is the whole budget's from the start,
    so pausing at 1/3 and resuming twice ends with the weights of one straight run."""
    straight = train(tiny_cfg(corpus_dir, "train.max_steps=12"), tmp_path / "straight", progress=QUIET)
    paused = train(tiny_cfg(corpus_dir, "train.max_steps=12"), tmp_path / "paused", progress=QUIET, pause_at=1 / 3)
    assert (paused["stopped_by"], paused["steps"], paused["budget_used"]) == ("paused", 4, pytest.approx(1 / 3))
    assert paused["test_ppl"] is None and not [r for r in checkpoint.read_metrics(tmp_path / "paused") if r.get("split") == "test"]
    cfg = checkpoint.resume_config(tmp_path / "paused", [], {})
    assert train(cfg, tmp_path / "paused", resume=True, progress=QUIET, pause_at=2 / 3)["steps"] == 8
    saved = checkpoint.load_train_state(tmp_path / "paused")
    saved["elapsed_seconds"] += 1000.0  # as if the first sessions had taken 1000 s more
    checkpoint.save_train_state(tmp_path / "paused", saved)
    resumed = train(cfg, tmp_path / "paused", resume=True, progress=QUIET)
    assert resumed["wall_seconds"] > 1000.0  # the wall time of every session, not only the last
    assert (resumed["stopped_by"], resumed["steps"]) == ("budget", 12) and resumed["test_ppl"] == straight["test_ppl"]
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("straight", "paused")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert 0.0 <= straight["others_cpu_share"] <= 1.0 and straight["cpu_seconds"] > 0 and straight["lr"] == 0.01


@pytest.mark.parametrize("override, message", [
    ("train.bptt=5000", "too few for train.batch_size=8 rows of train.bptt=5000"),
    ("tokenizer.vocab_size=100", "too small for this corpus"),
    ("train.precision=fp16", "train.precision=fp16 needs a CUDA device"),
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


def test_an_adaptive_softmax_run_trains_evaluates_and_generates(corpus_dir, tmp_path):
    from lmrnn.evaluate import evaluate_run
    import lmrnn

    run = tmp_path / "run"
    summary = train(tiny_cfg(corpus_dir, "model.output=adaptive", "model.tie_weights=false", "train.max_steps=30"),
                    run, progress=QUIET)
    model, _, _ = checkpoint.load_run(run, torch.device("cpu"))
    counts = torch.from_numpy(np.bincount(load_split_ids(run, corpus_dir), minlength=model.cfg.vocab_size))
    assert model.decoder.rank[counts.argmax()] == 0  # the clusters follow the training counts
    result = evaluate_run(run, "test")
    assert result.ppl == pytest.approx(summary["test_ppl"], rel=1e-6) and result.ppl < model.cfg.vocab_size
    assert lmrnn.load(run, device="cpu").generate("the", max_new_tokens=5, temperature=0)


def load_split_ids(run, corpus_dir):
    from lmrnn.corpus import Corpus
    from lmrnn.data import load_split
    from lmrnn.tokenizer import Tokenizer

    return load_split(Corpus(checkpoint.read_config(run).data), "train", Tokenizer.load(run / checkpoint.TOKENIZER)).ids


def test_clipping_off_and_sgd_still_train(corpus_dir, tmp_path):
    summary = train(tiny_cfg(corpus_dir, "train.clip_grad_norm=0", "train.optimizer=sgd", "train.lr=1.0",
                             "train.lr_schedule=plateau", "train.max_steps=10"), tmp_path / "run", progress=QUIET)
    assert math.isfinite(summary["test_ppl"]) and summary["steps"] == 10


def poison_training_forward(monkeypatch, steps, factor=float("nan")):
    """Multiply the decoder inputs, and so the logits, of the given training steps (1-based) by `factor`."""
    nll, calls = FullSoftmax.nll, [0]

    def poisoned(self, features, targets, reduction="mean"):
        if self.training:
            calls[0] += 1
            if calls[0] in steps:
                features = features * factor
        return nll(self, features, targets, reduction)

    monkeypatch.setattr(FullSoftmax, "nll", poisoned)


def test_a_non_finite_step_is_skipped_counted_and_logged(corpus_dir, tmp_path, monkeypatch):
    saved = {}
    save = checkpoint.save_train_state

    def keep_a_copy(run_dir, state):
        saved[state["step"]] = {k: v.clone() for k, v in state["model"].items()}
        save(run_dir, state)

    monkeypatch.setattr(checkpoint, "save_train_state", keep_a_copy)
    poison_training_forward(monkeypatch, {5, 6})
    summary = train(tiny_cfg(corpus_dir, "train.max_steps=10", "train.log_every=1", "train.save_every=1"),
                    tmp_path / "run", progress=QUIET)
    assert summary["skipped_steps"] == 2 and math.isfinite(summary["test_ppl"])
    events = checkpoint.read_metrics(tmp_path / "run")
    assert [e["step"] for e in events if e["event"] == "skipped"] == [5, 6]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4, 7, 8, 9, 10]
    unchanged = [all(torch.equal(saved[s][k], saved[s - 1][k]) for k in saved[s]) for s in range(2, 11)]
    assert unchanged == [False, False, False, True, True, False, False, False, False]  # steps 5 and 6 did nothing


def test_divergence_stops_with_the_last_good_checkpoint_which_resumes(corpus_dir, tmp_path, monkeypatch):
    healthy = FullSoftmax.nll
    poison_training_forward(monkeypatch, set(range(7, 100)))
    run = tmp_path / "run"
    with pytest.raises(UserError, match="training diverged: 3 steps in a row .*step 9.*-s train.lr=0.0025"):
        train(tiny_cfg(corpus_dir, "train.max_steps=20", "train.save_every=4", "train.max_bad_steps=3"), run,
              progress=QUIET)
    state = checkpoint.load_train_state(run)
    assert state["step"] == 8 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (run / ".lock").exists()
    monkeypatch.setattr(FullSoftmax, "nll", healthy)
    summary = train(checkpoint.resume_config(run, ["train.lr=0.0025"], {}), run, resume=True, progress=QUIET)
    assert summary["steps"] == 20 and math.isfinite(summary["test_ppl"])


def test_an_exploding_loss_is_reported(corpus_dir, tmp_path, monkeypatch):
    assert not loss_jumped([5.0, 5.1, 4.9, 5.0], 50.0)  # too little history yet
    assert loss_jumped([5.0, 5.1, 4.9, 5.0, 5.2], 5.0 + math.log(10) + 0.01)
    assert not loss_jumped([5.0, 5.1, 4.9, 5.0, 5.2], 5.0 + math.log(10) - 0.01)
    poison_training_forward(monkeypatch, {12}, factor=50.0)
    train(tiny_cfg(corpus_dir, "train.max_steps=14", "train.log_every=1"), tmp_path / "run", progress=QUIET)
    warnings = [e for e in checkpoint.read_metrics(tmp_path / "run") if e["event"] == "warning"]
    assert [(w["step"], w["message"]) for w in warnings] == [(12, "exploding loss")]


def test_a_validation_loss_past_709_nats_reads_as_infinite_perplexity(corpus_dir, tmp_path, monkeypatch):
    """A diverging but finite run (the PTB RNN at lr 9.3e-2) validated at a loss whose exp
    overflows a float: the run goes on and reports an infinite perplexity instead of crashing."""
    from lmrnn import loop

    monkeypatch.setattr(loop, "score_split", lambda model, split, *args: (800.0 * split.tokens, split.tokens))
    summary = train(tiny_cfg(corpus_dir, "train.max_steps=4"), tmp_path / "run", progress=QUIET)
    validation = [r for r in checkpoint.read_metrics(tmp_path / "run") if r.get("split") == "validation"]
    assert validation[-1]["loss"] == 800.0 and validation[-1]["ppl"] == math.inf
    assert summary["best_val_ppl"] == math.inf and summary["steps"] == 4


def lmrnn_process(*args):
    return subprocess.Popen([sys.executable, "-m", "lmrnn", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(run_dir, step, process):
    while process.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and any(r.get("step", 0) >= step for r in checkpoint.read_metrics(run_dir)):
            return
        time.sleep(0.005)
    raise AssertionError(f"the run ended before step {step}: {process.stderr.read()}")


def comparable(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_second")} for r in records]


SLOW_TINY = [*("--config", REPO / "configs" / "tiny.yaml"), "-s", "device=cpu", "-s", "model.hidden_size=96",
             "-s", "model.dropout=0.2", "-s", "train.epochs=0", "-s", "train.max_steps=150", "-s", "train.save_every=7",
             "-s", "train.eval_every=40", "-s", "train.log_every=3"]


# every AWD-LSTM technique at once, NT-ASGD averaging from the second evaluation (step 10)
AWD = ["-s", "model.layer_norm=true", "-s", "model.locked_dropout=true", "-s", "model.embedding_dropout=0.1",
       "-s", "model.weight_drop=0.3", "-s", "train.variable_bptt=true", "-s", "train.ar=1", "-s", "train.tar=1",
       "-s", "train.optimizer=nt_asgd", "-s", "train.lr=1", "-s", "train.asgd_patience=1", "-s", "train.eval_every=5"]


@pytest.mark.parametrize("extra", [[], AWD], ids=["plain", "awd"])
def test_sigkill_at_an_arbitrary_step_then_resume_is_bit_identical(corpus_dir, tmp_path, extra):
    """kill -9 mid-run (mid-write, possibly): resume continues from the last save and ends with
    the same weights, bit for bit, and the same metrics as a run never stopped; with AWD's
    techniques too (window position, dropout masks, the weight average)."""
    straight = lmrnn_process("train", corpus_dir, *SLOW_TINY, *extra, "--out", tmp_path / "straight")
    assert straight.wait() == 0, straight.stderr.read()
    kill_at = 53
    if extra:
        events = checkpoint.read_metrics(tmp_path / "straight")
        started = [r["step"] for r in events if r["event"] == "averaging"]
        assert len(started) == 1 and started[0] < 120
        assert all(r.get("averaged", False) == (r["step"] > started[0]) for r in events if r.get("split") == "validation")
        kill_at = started[0] + 13  # averaging is under way when the kill comes
    killed = lmrnn_process("train", corpus_dir, *SLOW_TINY, *extra, "--out", tmp_path / "killed")
    wait_for_step(tmp_path / "killed", kill_at, killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "summary.json").exists() and (tmp_path / "killed" / ".lock").exists()
    resumed = lmrnn_process("train", "--resume", "--out", tmp_path / "killed")
    assert resumed.wait() == 0, resumed.stderr.read()
    a = checkpoint.load_train_state(tmp_path / "straight")
    b = checkpoint.load_train_state(tmp_path / "killed")
    assert a["step"] == b["step"] == 150
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    best = [load_file(tmp_path / name / "model.safetensors") for name in ("straight", "killed")]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])  # the best weights too
    assert comparable(checkpoint.read_metrics(tmp_path / "straight")) == comparable(checkpoint.read_metrics(tmp_path / "killed"))
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == sorted(checkpoint.RUN_FILES)


def test_sigterm_saves_and_exits_143_and_the_run_resumes(corpus_dir, tmp_path):
    run = tmp_path / "run"
    process = lmrnn_process("train", corpus_dir, *SLOW_TINY, "--out", run)
    wait_for_step(run, 20, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait() == 143
    assert "stopped (terminate): continue with  lmrnn train --resume" in process.stderr.read()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "terminate" and 20 <= summary["steps"] < 150
    assert checkpoint.load_train_state(run)["step"] == summary["steps"] and not (run / ".lock").exists()
    resumed = lmrnn_process("train", "--resume", "--out", run)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert json.loads((run / "summary.json").read_text())["steps"] == 150


@pytest.mark.parametrize("preset", ["ptb-10min.yaml", "ptb-cpu.yaml", "ptb-awd-lstm.yaml"])
def test_the_ptb_presets_train_at_a_small_size(corpus_dir, tmp_path, preset):
    """Every technique the presets switch on runs together (shrunk to seconds on the CPU)."""
    cfg = load_config(REPO / "configs" / preset, [
        f"data.source={corpus_dir}", "device=cpu", "tokenizer.model_type=bpe", "tokenizer.vocab_size=300",
        "model.embedding_dim=16", "model.hidden_size=24", "train.batch_size=4", "train.eval_batch_size=4",
        "train.bptt=12", "train.epochs=0", "train.max_minutes=0", "train.max_steps=12", "train.eval_every=6",
        "train.warmup_steps=0"])
    summary = train(cfg, tmp_path / "run", progress=QUIET)
    assert summary["steps"] == 12 and math.isfinite(summary["test_ppl"]) and summary["skipped_steps"] == 0


@pytest.mark.corpus
@pytest.mark.skipif(not (SHARED_CORPORA / "tinyshakespeare" / "input.txt").is_file(),
                    reason="needs ../shared/corpora/tinyshakespeare")
def test_tiny_shakespeare_at_character_level_has_exactly_its_65_symbols_and_trains(tmp_path):
    """char-rnn's first run: 65 symbols, newline among them (here the end-of-sequence id) and
    space (the '▁' piece); plus <unk>. Each character is one token, so bits per character is
    log2 of the token perplexity."""
    from lmrnn.evaluate import evaluate_run

    corpus = SHARED_CORPORA / "tinyshakespeare" / "input.txt"
    symbols = set(corpus.read_text(encoding="utf-8"))
    cfg = tiny_cfg(corpus, "tokenizer.model_type=char", "tokenizer.vocab_size=0", f"data.cache_dir={tmp_path / 'cache'}",
                   "train.max_steps=30", "train.eval_every=0")
    summary = train(cfg, tmp_path / "run", progress=QUIET)
    saved = checkpoint.read_config(tmp_path / "run")
    assert len(symbols) == 65 and saved.model.vocab_size == 65 + 1  # + <unk>
    assert (saved.tokenizer.vocab_size, saved.tokenizer.byte_fallback) == (0, "false")
    result = evaluate_run(tmp_path / "run", device="cpu")
    assert result.tokenizer == "char" and summary["test_ppl"] < 65
    assert result.bits_per_char == pytest.approx(math.log2(result.ppl), rel=1e-9)  # one token per character
