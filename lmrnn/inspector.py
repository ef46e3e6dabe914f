"""lmrnn inspect: a run reading a text, as one self-contained HTML page (lmrnn.inspect_page).

For every token of the text: the state of a chosen layer after reading it (the LSTM's cell
state c, the others' hidden state h; recomputed by lmrnn.gates, tested against the model), its
surprisal -log p(token | text before it) in nats, and the five tokens the model expected most
there. Four simple features of the text are computed per token, and for each the unit whose
value follows it best (Pearson's r over the tokens), as Karpathy, Johnson & Fei-Fei (2015) found
units that track quotes and line position:

    quotes      1 inside "double quotes" (an odd number of " before the token's first character)
    brackets    1 inside (, [ or { not yet closed
    line        characters since the last line break, at the token's start
    word start  1 where the token begins a word (a space before it, or the line's start)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmrnn import checkpoint
from lmrnn.errors import UserError
from lmrnn.files import atomic_write
from lmrnn.gates import trace_states
from lmrnn.inspect_page import render_page
from lmrnn.models import RNNLM
from lmrnn.runtime import resolve_device
from lmrnn.text_stream import TextStream

TOP_CANDIDATES = 5
MAX_TOKENS = 5000


@dataclass
class Reading:
    """What the model did at each of the text's T tokens (the start-of-text id not counted)."""
    pieces: list[str]  # each token's text as it shows ("" for the first bytes of a split character)
    states: np.ndarray  # (T, H) float32: the shown state after each token
    surprisal: np.ndarray  # (T,) nats
    candidates: list[list[tuple[str, float]]]  # per token, the model's top guesses there and their probabilities


def read_text(model: RNNLM, tokenizer, text: str, layer: int = -1) -> Reading:
    """The model reading `text` as one stream, [eos] line1 [eos] line2 ..., from the start-of-text state."""
    eos = tokenizer.eos_id
    ids = [eos]
    for i, line in enumerate(text.removesuffix("\n").split("\n")):
        ids += ([eos] if i else []) + tokenizer.encode(line)
    stream = torch.tensor(ids)
    trace = trace_states(model, stream)[layer]
    states = (trace.c if trace.c is not None else trace.h)[1:]  # after each token of the text
    logprobs, surprisal, top = [], [], []
    with torch.inference_mode():
        hidden = None
        for start in range(0, len(ids) - 1, 512):  # the (T, V) log-probabilities a window at a time
            window = stream[start:start + 512][None].to(model.device)
            logits, hidden = model(window, hidden)
            logprobs = logits[0].float().log_softmax(-1)  # (w, V): predictions of the next tokens
            targets = stream[start + 1:start + 1 + window.size(1)]
            rows = torch.arange(len(targets))
            surprisal.append(-logprobs[rows, targets.to(logprobs.device)].cpu())
            values, indices = logprobs[:len(targets)].topk(TOP_CANDIDATES, dim=-1)
            top += [list(zip(i.tolist(), v.exp().tolist())) for i, v in zip(indices.cpu(), values.cpu())]
    shown = TextStream(tokenizer)
    pieces = [shown.push(i) for i in ids[1:]]
    name = {i: _piece_name(tokenizer, i) for i in {i for guesses in top for i, _ in guesses}}
    return Reading(pieces, states.float().cpu().numpy(), torch.cat(surprisal).numpy(),
                   [[(name[i], p) for i, p in guesses] for guesses in top])


def _piece_name(tokenizer, i: int) -> str:
    if i == tokenizer.eos_id:
        return "⏎"
    text = tokenizer.piece_texts[i]
    return text if text is not None else tokenizer.sp.id_to_piece(i)


def text_features(pieces: list[str]) -> dict[str, np.ndarray]:
    """QUOTES, BRACKETS, LINE and WORD START of each token (see the module's notes), (T,) each."""
    quotes, brackets, line, word = [], [], [], []
    inside_quote, depth, column, previous = False, 0, 0, "\n"
    for piece in pieces:
        quotes.append(float(inside_quote))
        brackets.append(float(depth > 0))
        line.append(float(column))
        word.append(float(bool(piece) and (piece[0] == " " or previous == "\n")))
        for char in piece:
            if char == '"':
                inside_quote = not inside_quote
            elif char in "([{":
                depth += 1
            elif char in ")]}":
                depth = max(0, depth - 1)
            column = 0 if char == "\n" else column + 1
            previous = char
    return {"quotes": np.array(quotes), "brackets": np.array(brackets), "line": np.array(line),
            "word start": np.array(word)}


def correlations(states: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson's r of each unit (column of states, (T, H)) with a feature (T,); 0 where either is constant."""
    x = states - states.mean(0)
    y = feature - feature.mean()
    scale = np.sqrt((x ** 2).sum(0) * (y ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y[:, None]).sum(0) / scale
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def tracking_units(states: np.ndarray, features: dict[str, np.ndarray]) -> list[dict]:
    """For each feature that varies in this text, the unit whose value follows it best."""
    found = []
    for name, feature in features.items():
        if feature.std() == 0:
            continue
        r = correlations(states, feature)
        unit = int(np.abs(r).argmax())
        found.append({"feature": name, "unit": unit, "r": float(r[unit])})
    return found


def inspect_run(run_dir: Path, text: str, out: Path, layer: int = -1, max_tokens: int = MAX_TOKENS,
                device: str = "auto") -> dict:
    """Write the page for `run_dir` reading `text` to `out`; returns what it shows, as data."""
    if not text.strip():
        raise UserError("the text is empty: nothing to inspect")
    model, tokenizer, cfg = checkpoint.load_run(run_dir, resolve_device(device))
    if not isinstance(model, RNNLM):
        raise UserError(f"{run_dir} is a {cfg.model.cell} model: inspect shows recurrent states")
    if not -cfg.model.num_layers <= layer < cfg.model.num_layers:
        raise UserError(f"--layer {layer}: the run has layers 0 to {cfg.model.num_layers - 1}")
    count = sum(len(ids) + 1 for ids in tokenizer.encode_batch(text.removesuffix("\n").split("\n"))) - 1
    if count > max_tokens:
        raise UserError(f"the text is {count:,} tokens, over --max-tokens {max_tokens:,}; cut it or raise the limit")
    reading = read_text(model, tokenizer, text, layer)
    units = tracking_units(reading.states, text_features(reading.pieces))
    shown_layer = layer % cfg.model.num_layers
    data = {"run": str(run_dir), "cell": cfg.model.cell, "layer": shown_layer,
            "state": "cell state c" if cfg.model.cell == "lstm" else "hidden state h",
            "hidden_size": cfg.model.hidden_size, "tokens": len(reading.pieces), "tracking": units,
            "mean_surprisal": float(reading.surprisal.mean()),
            "ppl": math.exp(float(reading.surprisal.mean()))}
    atomic_write(out, render_page(data, reading))
    return data
