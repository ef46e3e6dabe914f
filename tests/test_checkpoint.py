import pytest
import torch

from lmrnn import checkpoint
from lmrnn.config import RunConfig
from lmrnn.config_parser import load_config
from lmrnn.errors import UserError
from lmrnn.models import RNNLM
from lmrnn.tokenizer import train_tokenizer


def make_run(tmp_path, tie=True):
    cfg = load_config(overrides=["tokenizer.vocab_size=300", "model.embedding_dim=8", "model.hidden_size=8",
                                 "model.num_layers=1", f"model.tie_weights={tie}"])
    tokenizer = train_tokenizer(["the king had a sword .", "a fox ran ."] * 30, cfg.tokenizer)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = RNNLM(cfg.model)
    run = tmp_path / "run"
    checkpoint.clear_run(run)
    checkpoint.save_config(run, cfg)
    checkpoint.save_tokenizer(run, tokenizer)
    checkpoint.save_weights(run, model, step=3)
    return run, model, cfg


@pytest.mark.parametrize("tie", [True, False])
def test_save_then_load_gives_identical_logits(tmp_path, tie):
    run, model, cfg = make_run(tmp_path, tie)
    loaded, tokenizer, loaded_cfg = checkpoint.load_run(run, torch.device("cpu"))
    assert loaded_cfg == cfg and not loaded.training
    ids = torch.tensor([tokenizer.encode("the king ran")])
    model.eval()
    assert torch.equal(loaded(ids)[0], model(ids)[0])
    if tie:
        assert loaded.decoder.weight is loaded.embedding.weight
    assert not list(run.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_missing_files_are_named(tmp_path):
    run, _, _ = make_run(tmp_path)
    (run / "model.safetensors").unlink()
    (run / "tokenizer.model").unlink()
    with pytest.raises(UserError, match="incomplete: missing tokenizer.model, model.safetensors"):
        checkpoint.load_run(run, torch.device("cpu"))
    with pytest.raises(UserError, match="run directory not found"):
        checkpoint.load_run(tmp_path / "nope", torch.device("cpu"))


def test_truncated_or_mismatched_weights_are_user_errors(tmp_path):
    run, _, _ = make_run(tmp_path)
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated, corrupted or does not match"):
        checkpoint.load_run(run, torch.device("cpu"))
    weights.write_bytes(data)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("hidden_size: 8", "hidden_size: 9"))
    with pytest.raises(UserError, match="does not match config.yaml"):
        checkpoint.load_run(run, torch.device("cpu"))


def test_corrupted_train_state_is_a_user_error(tmp_path):
    run, model, _ = make_run(tmp_path)
    checkpoint.save_train_state(run, {"step": 4, "model": model.state_dict(), "optimizer": {},
                                      "rng": {"torch": torch.get_rng_state()}})
    assert checkpoint.load_train_state(run)["step"] == 4  # weights_only=True accepts the plain dict
    checkpoint.save_train_state(run, {"step": 4})
    with pytest.raises(UserError, match="not an lmrnn training state"):
        checkpoint.load_train_state(run)
    (run / "train_state.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="train_state.pt is truncated or corrupted"):
        checkpoint.load_train_state(run)


def test_existing_runs_are_never_silently_replaced(tmp_path):
    run, _, _ = make_run(tmp_path)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds a run; use --resume .* or --overwrite"):
        checkpoint.refuse_existing_run(run, overwrite=False)
    checkpoint.refuse_existing_run(run, overwrite=True)
    checkpoint.clear_run(run)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]  # only the run's own files go


def test_resume_may_change_only_limits_intervals_and_rescue_knobs(tmp_path):
    run, model, _ = make_run(tmp_path)
    checkpoint.save_train_state(run, {"step": 1})
    cfg = checkpoint.resume_config(run, ["train.max_steps=99", "device=cpu", "train.lr=0.001"], {})
    assert cfg.train.max_steps == 99
    with pytest.raises(UserError, match="cannot change model.hidden_size"):
        checkpoint.resume_config(run, ["model.hidden_size=16"], {})
    assert isinstance(checkpoint.read_config(run), RunConfig)


def test_a_tampered_train_state_is_refused_before_its_code_runs(tmp_path):
    """A pickle whose unpickling would call open(marker, "w") is refused; the marker never appears."""
    run, model, _ = make_run(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"step": 1, "model": model.state_dict(), "optimizer": {}, "rng": {}, "x": Payload()},
               run / "train_state.pt")
    with pytest.raises(UserError, match="objects other than tensors and plain data; refused"):
        checkpoint.load_train_state(run)
    assert not marker.exists()


FORMAT_7_KEYS = ("  eval_burn_in: 256\n", "  init_range: 0.3\n", "  recurrent_init: uniform\n")
FORMAT_5_KEYS = ("  locked_dropout: false\n", "  embedding_dropout: 0.0\n", "  weight_drop: 0.0\n", "  layer_norm: false\n",
                 "  variable_bptt: false\n", "  asgd_patience: 5\n", "  ar: 0.0\n", "  tar: 0.0\n")


def test_config_format_versions(tmp_path):
    run, _, cfg = make_run(tmp_path)
    text = (run / "config.yaml").read_text()
    assert text.startswith("format: 8\n") and all(key in text for key in FORMAT_5_KEYS) and "  output: softmax\n" in text
    before_8 = text.replace("format: 8\n", "format: 7\n").replace("  embedding_scale: 1.0\n", "")
    (run / "config.yaml").write_text(before_8)
    assert checkpoint.read_config(run) == cfg  # format 7 gains model.embedding_scale 1, the inputs unscaled
    before_7 = before_8.replace("format: 7\n", "format: 6\n")
    for key in FORMAT_7_KEYS:
        before_7 = before_7.replace(key, "")
    (run / "config.yaml").write_text(before_7)
    old_cfg = checkpoint.read_config(run)  # format 6 evaluates from the zero state, with the old initialisation
    assert (old_cfg.train.eval_burn_in, old_cfg.model.init_range, old_cfg.model.recurrent_init) == (0, 0.1, "uniform")
    before_6 = before_7.replace("format: 6\n", "format: 5\n").replace("  output: softmax\n", "")
    (run / "config.yaml").write_text(before_6)
    assert checkpoint.read_config(run) == old_cfg  # format 5 gains model.output, the full softmax
    before_5 = before_6
    for key in FORMAT_5_KEYS:
        before_5 = before_5.replace(key, "")
    # format 1 (no version line, no train.save_minutes / max_bad_steps, no model.order) is migrated
    old = (before_5.replace("format: 5\n", "").replace("  streaming: false\n", "").replace("  save_minutes: 10.0\n", "")
           .replace("  max_bad_steps: 10\n", "").replace("  order: 5\n", ""))
    assert "save_minutes" not in old and "order" not in old
    (run / "config.yaml").write_text(old)
    migrated = checkpoint.read_config(run)
    assert migrated.train.save_minutes == 0.0 and migrated.train.max_bad_steps == 10  # format 1's behaviour
    assert migrated.model == old_cfg.model
    (run / "config.yaml").write_text(before_5.replace("format: 5", "format: 2").replace("  order: 5\n", "")
                                     .replace("  streaming: false\n", ""))
    assert checkpoint.read_config(run).model.order == 5  # format 2 gains model.order
    (run / "config.yaml").write_text(before_5.replace("format: 5", "format: 3").replace("  streaming: false\n", ""))
    assert checkpoint.read_config(run).data.streaming is False  # format 3 gains data.streaming
    (run / "config.yaml").write_text(before_5.replace("format: 5", "format: 4"))
    assert checkpoint.read_config(run) == old_cfg  # format 4 gains the regularisers, all off
    (run / "config.yaml").write_text(text.replace("format: 8", "format: 9"))
    with pytest.raises(UserError, match="written by a newer lmrnn \\(run format 9; .* reads up to 8\\)"):
        checkpoint.read_config(run)
    (run / "config.yaml").write_text(text.replace("  bptt: 70\n", ""))
    with pytest.raises(UserError, match="is missing train.bptt"):
        checkpoint.read_config(run)
    (run / "config.yaml").write_text(text.replace("  bptt: 70\n", "  bptt: 70\n  bpt: 3\n"))
    with pytest.raises(UserError, match="unknown config key 'train.bpt'"):
        checkpoint.read_config(run)


def test_the_lock_refuses_a_live_owner_and_clears_a_dead_one(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    run = tmp_path / "run"
    with checkpoint.run_lock(run):
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"being trained by process {os.getpid()}"):
            with checkpoint.run_lock(run):
                pass
    assert not (run / ".lock").exists()  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    (run / ".model.safetensors.tmp99999").write_bytes(b"half")  # debris of the killed writer
    (run / ".notes.tmp1").write_text("not ours")
    with checkpoint.run_lock(run):
        pass  # stale: cleared
    assert sorted(p.name for p in run.iterdir()) == [".notes.tmp1"]
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(UserError, match="on elsewhere; wait for it, or delete"):
        with checkpoint.run_lock(run):
            pass
