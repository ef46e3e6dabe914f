import json

import numpy as np
import pytest
from typer.testing import CliRunner

import lmrnn
from lmrnn.cli import app
from lmrnn.config_parser import load_config
from lmrnn.console import TrainingProgress
from lmrnn.errors import UserError
from lmrnn.train import train
from tests.conftest import REPO

onnxruntime = pytest.importorskip("onnxruntime")

from lmrnn.export import OnnxStep, export_onnx, verify  # noqa: E402  (after the skip: it needs onnx)


def tiny_run(corpus, folder, *overrides):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.source={corpus}", "device=cpu", "train.max_steps=20",
                                                       f"data.cache_dir={folder.parent / 'cache'}", *overrides])
    train(cfg, folder, progress=TrainingProgress(enabled=False))
    return folder


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_onnx_logits_and_greedy_text_equal_pytorchs(corpus_dir, tmp_path, cell):
    run = tiny_run(corpus_dir, tmp_path / cell, f"model.cell={cell}", "model.num_layers=2")
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    assert "largest logit difference" in result.stderr
    meta = json.loads((tmp_path / "onnx" / "lmrnn.json").read_text())
    assert meta["cell"] == cell and meta["layers"] == 2 and (meta["inputs"][-1] == "c0") == (cell == "lstm")
    assert verify(run, tmp_path / "onnx", tokens=150, batch=4) < 1e-4  # any batch and length
    lm = lmrnn.load(run, device="cpu")
    prompt = lm._generator.prompt_ids("the king")
    expected = lm.complete("the king", temperature=0, max_new_tokens=50, stop_at_eos=False).continuations[0].ids
    assert OnnxStep(tmp_path / "onnx").greedy(prompt, 50, stop_at_eos=False) == expected


def test_state_carried_across_calls_equals_one_call(corpus_dir, tmp_path):
    run = tiny_run(corpus_dir, tmp_path / "gru", "model.cell=gru")
    export_onnx(run, tmp_path / "onnx")
    step = OnnxStep(tmp_path / "onnx")
    ids = np.random.default_rng(0).integers(300, size=(2, 40))
    whole, _ = step.step(ids, step.zero_state(2))
    first, state = step.step(ids[:, :25], step.zero_state(2))
    second, _ = step.step(ids[:, 25:], state)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-5)


def test_export_refuses_what_it_cannot_write(corpus_dir, tmp_path):
    layer_norm = tiny_run(corpus_dir, tmp_path / "ln", "model.layer_norm=true")
    with pytest.raises(UserError, match="layer-normalised"):
        export_onnx(layer_norm, tmp_path / "out1")
    ffnn = tiny_run(corpus_dir, tmp_path / "ffnn", "model.cell=ffnn")
    with pytest.raises(UserError, match="export writes recurrent runs"):
        export_onnx(ffnn, tmp_path / "out2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(app, ["export", str(layer_norm), "--out", str(tmp_path / "full")])
    assert refused.exit_code == 1 and "is not empty" in refused.stderr
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
