import pytest
import torch

from lmrnn import checkpoint
from lmrnn.config import RunConfig, load_config
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
    checkpoint.save_train_state(run, {"step": 4, "model": model.state_dict(), "rng": {"torch": torch.get_rng_state()}})
    assert checkpoint.load_train_state(run)["step"] == 4  # weights_only=True accepts the plain dict
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


def test_resume_may_change_only_the_stop_limits(tmp_path):
    run, model, _ = make_run(tmp_path)
    checkpoint.save_train_state(run, {"step": 1})
    cfg = checkpoint.resume_config(run, ["train.max_steps=99", "device=cpu"], {})
    assert cfg.train.max_steps == 99
    with pytest.raises(UserError, match="cannot change model.hidden_size"):
        checkpoint.resume_config(run, ["model.hidden_size=16"], {})
    assert isinstance(checkpoint.read_config(run), RunConfig)
