"""lmrnn export RUN --format onnx --out DIR: a recurrent run's step as ONNX, to run without PyTorch.

    DIR/model.onnx       ids (B, T) int64, h0 (L, B, H) [, c0 (L, B, H) for an LSTM]
                         -> logits (B, T, V) [log-probabilities for the adaptive softmax], h [, c]
                         B and T are dynamic; zeros for h0 (and c0) is the start-of-text state
    DIR/tokenizer.model  the run's SentencePiece model
    DIR/lmrnn.json       the cell, layers, hidden and vocabulary sizes, the end-of-sequence id
                         (fed first: the start of a text), the input and output names

The step is traced by PyTorch's TorchScript-based exporter, which writes nn.LSTM / nn.GRU /
nn.RNN as ONNX's own LSTM / GRU / RNN operators, so one graph serves any length. Layer-normalised
layers step in Python, which tracing would unroll to one fixed length: they are refused, as are
the feed-forward and n-gram baselines, which carry no recurrent state. `verify` runs the file
through onnxruntime against PyTorch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmrnn import checkpoint
from lmrnn.errors import UserError
from lmrnn.files import atomic_write
from lmrnn.models import RNNLM

OPSET = 17
MODEL, TOKENIZER, META = "model.onnx", "tokenizer.model", "lmrnn.json"


class _Step(nn.Module):
    """The model with its state as separate tensors, as ONNX wants them."""

    def __init__(self, model: RNNLM):
        super().__init__()
        self.model, self.lstm = model, model.cfg.cell == "lstm"

    def forward(self, ids: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None = None):
        logits, hidden = self.model(ids, (h0, c0) if self.lstm else h0)
        return (logits, *hidden) if self.lstm else (logits, hidden)


def export_onnx(run_dir: Path, out: Path, overwrite: bool = False) -> dict:
    """Write DIR/model.onnx, tokenizer.model and lmrnn.json for `run_dir`; returns lmrnn.json's content."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; use --overwrite or another --out")
    model, tokenizer, cfg = checkpoint.load_run(run_dir, torch.device("cpu"))
    if not isinstance(model, RNNLM):
        raise UserError(f"{run_dir} is a {cfg.model.cell} model: export writes recurrent runs")
    if cfg.model.layer_norm:
        raise UserError(f"{run_dir} has layer-normalised layers, which step in Python: ONNX's tracer would unroll "
                        "them to one fixed length; export supports nn.LSTM / nn.GRU / nn.RNN layers")
    lstm = cfg.model.cell == "lstm"
    L, H = cfg.model.num_layers, cfg.model.hidden_size
    inputs = ["ids", "h0"] + (["c0"] if lstm else [])
    outputs = ["logits", "h"] + (["c"] if lstm else [])
    example = (torch.tensor([[tokenizer.eos_id, 5, 7]]), torch.zeros(L, 1, H)) + ((torch.zeros(L, 1, H),) if lstm else ())
    axes = {"ids": {0: "batch", 1: "length"}, "logits": {0: "batch", 1: "length"},
            **{name: {1: "batch"} for name in inputs[1:] + outputs[1:]}}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MODEL}.tmp"
    with warnings.catch_warnings():  # the exporter warns that batch-first RNNs are traced with a fixed shape note
        warnings.simplefilter("ignore")
        torch.onnx.export(_Step(model).eval(), example, str(tmp), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    atomic_write(out / MODEL, tmp.read_bytes())
    tmp.unlink()
    atomic_write(out / TOKENIZER, tokenizer.model_bytes)
    meta = {"cell": cfg.model.cell, "layers": L, "hidden_size": H, "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id, "inputs": inputs, "outputs": outputs, "opset": OPSET,
            "output": "log_probs" if cfg.model.output == "adaptive" else "logits", "run": str(run_dir)}
    atomic_write(out / META, json.dumps(meta, indent=2) + "\n")
    return meta


class OnnxStep:
    """An exported step run by onnxruntime: `step(ids, state)` -> (logits (B, T, V), state)."""

    def __init__(self, folder: Path, threads: int = 0):
        import onnxruntime

        self.meta = json.loads((folder / META).read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(folder / MODEL), options, providers=["CPUExecutionProvider"])

    def zero_state(self, batch: int) -> list[np.ndarray]:
        shape = (self.meta["layers"], batch, self.meta["hidden_size"])
        return [np.zeros(shape, dtype=np.float32) for _ in self.meta["inputs"][1:]]

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"ids": ids.astype(np.int64), **dict(zip(self.meta["inputs"][1:], state))}
        logits, *state = self.session.run(None, feeds)
        return logits, state

    def greedy(self, prompt_ids: list[int], max_new_tokens: int, stop_at_eos: bool = True) -> list[int]:
        """Greedy continuation of `prompt_ids` (the leading end-of-sequence included)."""
        logits, state = self.step(np.array([prompt_ids]), self.zero_state(1))
        new = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            new.append(token)
            if stop_at_eos and token == self.meta["eos_id"]:
                break
            logits, state = self.step(np.array([[token]]), state)
        return new


def verify(run_dir: Path, folder: Path, tokens: int = 200, batch: int = 3) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's logits on random ids of
    the run's vocabulary, (batch, tokens), from the start-of-text state."""
    model, tokenizer, _ = checkpoint.load_run(run_dir, torch.device("cpu"))
    ids = torch.randint(tokenizer.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = tokenizer.eos_id
    with torch.inference_mode():
        expected = model(ids)[0].float().numpy()
    onnx = OnnxStep(folder)
    got, _ = onnx.step(ids.numpy(), onnx.zero_state(batch))
    return float(np.abs(got - expected).max())
