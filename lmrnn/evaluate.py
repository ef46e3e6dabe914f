"""Exact negative log-likelihood of a whole split, and the figures derived from it.

    ppl            = exp(NLL / tokens)          depends on the tokenizer
    word_ppl       = exp(NLL / words)           words = whitespace words + one end-of-line per
                                                line, the convention of published PTB results
    bits_per_byte  = NLL / ln 2 / bytes         bytes = UTF-8 bytes + one newline per line

The last two divide the same total NLL by counts that do not depend on the tokenizer, so runs
with different tokenizers compare fairly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lmrnn import checkpoint
from lmrnn.data import IGNORE_INDEX, Corpus, Split, as_long, batchify, load_split, windows
from lmrnn.errors import UserError
from lmrnn.models import RNNLM, NgramLM
from lmrnn.runtime import Ranks, autocast, resolve_device


@dataclass
class EvalResult:
    run: str
    split: str
    tokens: int
    words: int
    bytes: int
    nll: float  # total negative log-likelihood of the split, in nats
    ppl: float
    word_ppl: float
    bits_per_byte: float
    params: int
    cell: str

    def as_dict(self) -> dict:
        return asdict(self)


def token_nll(model: RNNLM, x: torch.Tensor, y: torch.Tensor, bptt: int,
              amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """NLL (nats) of every target of x, y (B, L) as a (B, L) float32 CPU tensor, the hidden
    state carried from window to window; 0 where the target is padding (IGNORE_INDEX). The ids
    go to the device once and the NLL comes back once: no host copy or wait per window."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x, y = as_long(x).to(device), as_long(y).to(device)
    # filled in place: a small tensor kept per window would sit between the large freed ones
    # and fragment the CPU heap (glibc), which grew by ~20 MB per window before
    losses = torch.empty(x.shape, dtype=torch.float32, device=device)  # (B, L)
    hidden = None
    with torch.inference_mode():
        for offset, (xw, yw) in zip(range(0, x.shape[1], bptt), windows(x, y, bptt)):
            with autocast(device, amp_dtype):
                losses[:, offset:offset + xw.size(1)], hidden = model.token_nll(xw, yw, hidden)  # (B, T)
    model.train(was_training)
    return losses.cpu()


def evaluate_nll(model: RNNLM, x: torch.Tensor, y: torch.Tensor, bptt: int,
                 amp_dtype: torch.dtype | None = None) -> tuple[float, int]:
    """Summed NLL (nats) and target count over all of x, y (B, L), the hidden state carried
    from window to window. Padded targets (IGNORE_INDEX) count neither way."""
    losses = token_nll(model, x, y, bptt, amp_dtype)
    return losses.double().sum().item(), int((y != IGNORE_INDEX).sum())


def score_split(model: RNNLM, split: Split, batch_size: int, bptt: int,
                amp_dtype: torch.dtype | None = None, ranks: Ranks = Ranks()) -> tuple[float, int]:
    """Exact NLL of a split: every token predicted once (the last row padded, not trimmed). An
    n-gram model reads the split as one stream: its history never crosses an eos anyway. In a
    distributed run each rank scores its share of the rows and the sums are added up (exactly
    the one-process total, not a mean of per-rank means)."""
    if isinstance(model, NgramLM):
        return float(-model.kn.score(split.ids).sum()), split.tokens
    x, y = batchify(split.ids, batch_size, pad=True)
    first, last = (batch_size * r // ranks.size for r in (ranks.rank, ranks.rank + 1))
    nll, count = evaluate_nll(model, x[first:last], y[first:last], bptt, amp_dtype) if last > first else (0.0, 0)
    nll, count = ranks.sum(torch.tensor([nll, count], dtype=torch.float64, device=next(model.parameters()).device)).tolist()
    assert count == split.tokens, (count, split.tokens)
    return nll, int(count)


def figures(nll: float, split: Split) -> dict[str, float]:
    return {"ppl": _exp(nll / split.tokens), "word_ppl": _exp(nll / split.words),
            "bits_per_byte": nll / math.log(2) / split.bytes}


def _exp(value: float) -> float:
    return math.exp(value) if value < 700 else math.inf


def evaluate_run(run_dir: Path, split: str = "test", data: str | None = None,
                 device: str = "auto", batch_size: int | None = None) -> EvalResult:
    """Score one run directory on a split of its own corpus, or of `data` with its tokenizer,
    in `batch_size` rows (default: the run's train.eval_batch_size; 1 = one stream)."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    torch_device = resolve_device(device)
    model, tokenizer, cfg = checkpoint.load_run(run_dir, torch_device)
    if data is not None:
        cfg.data.source = data
    text = load_split(Corpus(cfg.data), split, tokenizer)
    if text.tokens < 1:
        raise UserError(f"the {split} split of {cfg.data.source or 'the corpus'} is empty")
    nll, tokens = score_split(model, text, batch_size or cfg.train.eval_batch_size, cfg.train.bptt)
    return EvalResult(run=str(run_dir), split=split, tokens=tokens, words=text.words, bytes=text.bytes,
                      nll=nll, params=model.num_parameters(), cell=cfg.model.cell, **figures(nll, text))


@dataclass
class LineScore:
    text: str
    tokens: int  # the line's tokens plus its end-of-line (end-of-sequence)
    logprob: float  # natural log-probability of those tokens given the start-of-text state

    @property
    def ppl(self) -> float:
        return _exp(-self.logprob / self.tokens)

    def as_dict(self) -> dict:
        return {**asdict(self), "ppl": self.ppl}


def score_lines(run_dir: Path, lines: list[str], device: str = "auto", batch_size: int = 32) -> list[LineScore]:
    """Each line scored on its own, as a document: [eos] line [eos], every target predicted from
    the start-of-text state. The same NLL `eval` gives a one-line split. Lines are batched
    longest first, padded on the right (a recurrent model never sees the padding of its row)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    model, tokenizer, cfg = checkpoint.load_run(run_dir, resolve_device(device))
    if not lines:
        raise UserError("nothing to score: the text has no lines")
    eos = tokenizer.eos_id
    sequences = [[eos] + ids + [eos] for ids in tokenizer.encode_batch(lines)]
    if isinstance(model, NgramLM):
        return [LineScore(line, len(seq) - 1, float(model.kn.score(np.array(seq)).sum()))
                for line, seq in zip(lines, sequences)]
    order = sorted(range(len(lines)), key=lambda i: -len(sequences[i]))
    logprobs = [0.0] * len(lines)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = len(sequences[rows[0]]) - 1
        x = torch.full((len(rows), length), eos, dtype=torch.long)
        y = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for b, i in enumerate(rows):
            sequence = torch.tensor(sequences[i])
            x[b, :len(sequence) - 1], y[b, :len(sequence) - 1] = sequence[:-1], sequence[1:]
        for i, nll in zip(rows, token_nll(model, x, y, cfg.train.bptt).double().sum(dim=1).tolist()):
            logprobs[i] = -nll
    return [LineScore(line, len(seq) - 1, logprob) for line, seq, logprob in zip(lines, sequences, logprobs)]
