"""CUDA paths: bf16 autocast, cuDNN, device placement. Skipped without a GPU."""

import json

import pytest
import torch

from lmrnn.config_parser import load_config
from lmrnn.console import TrainingProgress
from lmrnn.evaluate import evaluate_run
import lmrnn
from lmrnn.generate import TextGenerator
from lmrnn.sampling import Decoding
from lmrnn.runtime import autocast_dtype, resolve_device
from lmrnn.train import train
from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_auto_device_and_precision_pick_cuda_bf16():
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert autocast_dtype(device, "auto") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_train_eval_generate_on_cuda(cell, corpus_dir, tmp_path):
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.source={corpus_dir}", "device=cuda", f"model.cell={cell}"])
    summary = train(cfg, tmp_path / "run", progress=TrainingProgress(enabled=False))
    assert summary["device"] == "cuda" and summary["best_val_ppl"] < 300
    result = evaluate_run(tmp_path / "run", "test", device="cuda")
    cpu = evaluate_run(tmp_path / "run", "test", device="cpu")
    assert result.ppl == pytest.approx(cpu.ppl, rel=1e-3)  # fp32 eval on both
    on_gpu, on_cpu = lmrnn.load(tmp_path / "run", device="cuda"), lmrnn.load(tmp_path / "run", device="cpu")
    assert on_gpu.generate("the", max_new_tokens=12, temperature=0) == on_cpu.generate("the", max_new_tokens=12, temperature=0)
    sampled = [on_gpu.generate("the", top_p=0.9, num_samples=4, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]  # seeded draws on the GPU are reproducible there
    beams = TextGenerator(tmp_path / "run", "cuda").generate("the", Decoding(beams=4, num_return=2)).continuations
    assert len(beams) == 2 and beams[0].score >= beams[1].score
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 20


def test_torchrun_one_gpu_nccl_smoke(corpus_dir, tmp_path):
    """torchrun with one process joins an NCCL group of one: DDP, the per-step all-reduce, the
    gathers of hidden state and RNGs, and the weight broadcast all run on the GPU."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "lmrnn",
               "train", str(corpus_dir), "-c", str(REPO / "configs" / "tiny.yaml"), "-o", str(tmp_path / "run"),
               "-s", "device=cuda"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["processes"] == 1 and summary["best_val_ppl"] < 300


def test_layer_norm_cells_compiled_on_cuda_match_the_cpu(tmp_path):
    """On CUDA the layer-normalised step is compiled: same values as the plain CPU loop (fp32),
    and it trains under bf16 autocast."""
    from lmrnn.cells import LayerNormRNN

    for cell in ("lstm", "gru", "rnn"):
        torch.manual_seed(0)
        layer = LayerNormRNN(cell, 16, 32)
        x = torch.randn(4, 9, 16)
        expected, _ = layer(x)
        got, _ = layer.cuda()(x.cuda())
        torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = layer(x.cuda())
        out.float().pow(2).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_weight_drop_on_cudnn_warns_nothing_and_trains_every_layer(corpus_dir, tmp_path):
    """functional_call hands cuDNN the dropped matrices: no flatten_parameters error, no
    'non-contiguous weights' warning, gradients on every recurrent matrix, bf16 autocast."""
    import warnings

    from lmrnn.config import ModelConfig
    from lmrnn.models import RNNLM

    for locked in (False, True):
        model = RNNLM(ModelConfig(vocab_size=50, embedding_dim=32, hidden_size=32, num_layers=2, weight_drop=0.5,
                                  locked_dropout=locked)).cuda().train()
        model.flatten_parameters()
        with warnings.catch_warnings(record=True) as caught, torch.autocast("cuda", dtype=torch.bfloat16):
            warnings.simplefilter("always")
            logits, _ = model(torch.randint(0, 50, (4, 10), device="cuda"))
        logits.float().mean().backward()
        assert not [w for w in caught if "contiguous" in str(w.message)]
        assert all(p.grad.abs().sum() > 0 for m in model.recurrent_modules
                   for name, p in m.named_parameters() if name.startswith("weight_hh"))
    cfg = load_config(REPO / "configs" / "ptb-awd-lstm.yaml",
                      [f"data.source={corpus_dir}", "device=cuda", "tokenizer.model_type=bpe", "tokenizer.vocab_size=300",
                       "model.hidden_size=64", "model.embedding_dim=32", "train.batch_size=8", "train.eval_batch_size=8",
                       "train.bptt=16", "train.epochs=0", "train.max_minutes=0", "train.max_steps=30", "train.eval_every=10"])
    summary = train(cfg, tmp_path / "awd", progress=TrainingProgress(enabled=False))
    assert summary["device"] == "cuda" and summary["best_val_ppl"] < 300


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_on_cuda_without_a_cudnn_weight_warning(precision, corpus_dir, tmp_path):
    """fp16 goes through the gradient scaler (its state saved for --resume); every precision
    keeps cuDNN's weights in one flat buffer (no 'non-contiguous' warning) and the fused optimizer."""
    import warnings

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.source={corpus_dir}", "device=cuda",
                                                       f"train.precision={precision}", "train.max_steps=30"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg, tmp_path / "run", progress=TrainingProgress(enabled=False))
    assert not [w for w in caught if "contiguous" in str(w.message)]
    assert summary["device"] == "cuda" and summary["best_val_ppl"] < 300 and summary["skipped_steps"] == 0
    from lmrnn import checkpoint

    state = checkpoint.load_train_state(tmp_path / "run")
    assert ("scaler" in state) == (precision == "fp16")
    assert state["optimizer"]["param_groups"][0]["fused"]


def test_the_fused_loss_on_cuda_equals_cross_entropy_and_saves_memory():
    import torch.nn.functional as F

    from lmrnn.softmax import FullSoftmax

    torch.manual_seed(0)
    decoder = FullSoftmax(256, 33278).cuda()
    features = torch.randn(4096, 256, device="cuda", requires_grad=True)
    targets = torch.randint(0, 33278, (4096,), device="cuda")
    peaks = []
    for fused in (True, False):
        features.grad, decoder.weight.grad, decoder.bias.grad = None, None, None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        loss = decoder.nll(features, targets) if fused else F.cross_entropy(decoder(features), targets)
        loss.backward()
        peaks.append(torch.cuda.max_memory_allocated() - start)
        grads = [features.grad.clone(), decoder.weight.grad.clone()]
        if fused:
            fused_loss, fused_grads = loss.item(), grads
    assert fused_loss == pytest.approx(loss.item(), rel=1e-5)
    for a, b in zip(fused_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert peaks[0] < peaks[1] / 2  # 4096 x 33278 float32 logits: 545 MB each, not kept by the fused loss
