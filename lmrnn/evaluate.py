"""Exact negative log-likelihood of a whole split, and the figures derived from it.

    ppl            = exp(NLL / tokens)          depends on the tokenizer
    word_ppl       = exp(NLL / words)           words = whitespace words + one end-of-line per
                                                line, the convention of published PTB results
    bits_per_byte  = NLL / ln 2 / bytes         bytes = UTF-8 bytes + one newline per line
    bits_per_char  = NLL / ln 2 / characters    characters = Unicode characters + one newline
                                                per line (char-rnn's figure; shown for char runs)

The last three divide the same total NLL by counts that do not depend on the tokenizer, so runs
with different tokenizers compare fairly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lmrnn import checkpoint
from lmrnn.corpus import WHOLE, Corpus
from lmrnn.data import IGNORE_INDEX, Split, as_long, load_split
from lmrnn.config import RunConfig
from lmrnn.errors import UserError
from lmrnn.models import RNNLM, NgramLM, reset_rows
from lmrnn.runtime import Ranks, autocast, resolve_device
from lmrnn.tokenizer import Tokenizer


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
    bits_per_char: float
    params: int
    cell: str
    tokenizer: str  # the tokenizer's model type: bpe, unigram, char or word

    def as_dict(self) -> dict:
        return asdict(self)


def scoring_rows(ids: np.ndarray, batch_size: int, burn_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split's N (input, target) pairs as `batch_size` rows of L = ceil(N / B) scored pairs,
    each row first reading the `burn_in` (K) inputs that precede it in the stream, unscored:

        stream pairs 0 .. N-1        row b scores pairs [bL, (b+1)L) (the last row padded)
        row b, K + L columns:        [bL - K, bL) read, targets IGNORE_INDEX | its L scored pairs

    Without it every row would start from the zero state, which a model trained with a carried
    state rarely sees, and the figure would move with B. A row with fewer than K pairs before
    it (bL < K) is padded on the left; `starts[b]` is the column where its text begins, and the
    scorer resets its state there, so that it reads the stream from the start, from the zero
    state, exactly as one stream would. Returns x, y (B, K + L) int32 and starts (B,) int64."""
    n, K = len(ids) - 1, burn_in
    length = -(-n // batch_size)
    x = np.full(K + length * batch_size, ids[0], dtype=np.int32)  # the stream's inputs, K columns of padding first
    y = np.full(K + length * batch_size, IGNORE_INDEX, dtype=np.int32)
    x[K:K + n], y[K:K + n] = ids[:-1], ids[1:]
    rows = np.arange(batch_size)[:, None] * length + np.arange(K + length)[None, :]  # (B, K + L) indices
    x, y = x[rows], y[rows]
    y[:, :K] = IGNORE_INDEX  # read, not scored: each target is scored once, in its own row
    starts = K - np.minimum(K, np.arange(batch_size) * length)
    return x, y, starts


def token_nll(model: RNNLM, x: torch.Tensor, y: torch.Tensor, bptt: int,
              amp_dtype: torch.dtype | None = None, burn_in: int = 0,
              starts: np.ndarray | None = None) -> torch.Tensor:
    """NLL (nats) of every target of x, y (B, L) as a (B, L) float32 CPU tensor, the hidden
    state carried from window to window; 0 where the target is padding (IGNORE_INDEX). The ids
    go to the device once and the NLL comes back once: no host copy or wait per window.

    The first `burn_in` columns are only read (no decoder), and row b's state is reset to the
    zero state at column starts[b] (see scoring_rows)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x, y = as_long(x).to(device), as_long(y).to(device)
    # filled in place: a small tensor kept per window would sit between the large freed ones
    # and fragment the CPU heap (glibc), which grew by ~20 MB per window before
    losses = torch.zeros(x.shape, dtype=torch.float32, device=device)  # (B, L)
    starts = torch.zeros(x.shape[0], dtype=torch.long) if starts is None else torch.as_tensor(starts)
    # windows of bptt columns, cut also where a row's text begins and where scoring begins
    cuts = sorted({*range(0, burn_in, bptt), *starts[(starts > 0) & (starts < burn_in)].tolist(),
                   *range(burn_in, x.shape[1], bptt)})
    hidden = None
    with torch.inference_mode():
        for begin, end in zip(cuts, cuts[1:] + [x.shape[1]]):
            if hidden is not None and bool((starts == begin).any()):
                hidden = reset_rows(hidden, (starts == begin).to(device))
            with autocast(device, amp_dtype):
                if end <= burn_in:
                    _, hidden = model.encode(x[:, begin:end], hidden)
                else:
                    losses[:, begin:end], hidden = model.token_nll(x[:, begin:end], y[:, begin:end], hidden)  # (B, T)
    model.train(was_training)
    return losses.cpu()


def evaluate_nll(model: RNNLM, x: torch.Tensor, y: torch.Tensor, bptt: int,
                 amp_dtype: torch.dtype | None = None) -> tuple[float, int]:
    """Summed NLL (nats) and target count over all of x, y (B, L), the hidden state carried
    from window to window. Padded targets (IGNORE_INDEX) count neither way."""
    losses = token_nll(model, x, y, bptt, amp_dtype)
    return losses.double().sum().item(), int((y != IGNORE_INDEX).sum())


def score_split(model: RNNLM, split: Split, batch_size: int, bptt: int,
                amp_dtype: torch.dtype | None = None, ranks: Ranks = Ranks(), burn_in: int = 0) -> tuple[float, int]:
    """Exact NLL of a split: every token predicted once, in `batch_size` rows, each row first
    reading the `burn_in` tokens before it (scoring_rows). An n-gram model reads the split as
    one stream: its history never crosses an eos anyway. In a distributed run each rank scores
    its share of the rows and the sums are added up (exactly the one-process total, not a mean
    of per-rank means)."""
    if isinstance(model, NgramLM):
        return float(-model.kn.score(split.ids).sum()), split.tokens
    x, y, starts = scoring_rows(split.ids, batch_size, burn_in)
    first, last = (batch_size * r // ranks.size for r in (ranks.rank, ranks.rank + 1))
    nll, count = 0.0, 0
    if last > first:
        losses = token_nll(model, x[first:last], y[first:last], bptt, amp_dtype, burn_in, starts[first:last])
        nll, count = losses.double().sum().item(), int((y[first:last] != IGNORE_INDEX).sum())
    nll, count = ranks.sum(torch.tensor([nll, count], dtype=torch.float64, device=next(model.parameters()).device)).tolist()
    assert count == split.tokens, (count, split.tokens)
    return nll, int(count)


def figures(nll: float, split: Split) -> dict[str, float]:
    return {"ppl": perplexity(nll / split.tokens), "word_ppl": perplexity(nll / split.words),
            "bits_per_byte": nll / math.log(2) / split.bytes, "bits_per_char": nll / math.log(2) / split.characters}


def perplexity(loss: float) -> float:
    """exp(loss), and inf where that overflows (a diverging run's loss can pass 709 nats and still be finite)."""
    return math.exp(loss) if loss < 700 else math.inf


def text_to_score(cfg: RunConfig, tokenizer: Tokenizer, data: str | None = None, split: str | None = None,
                  default: str = "test") -> tuple[Split, str]:
    """The text a run is scored on, and its split's name: `split` (else `default`) of the run's
    corpus or of `data`. `data` without splits of its own (a text file, a folder of plain .txt
    files) is scored whole, as WHOLE, and then refuses an explicit `split`. Refuses empty text."""
    corpus = Corpus(cfg.data if data is None else dataclasses.replace(cfg.data, source=data))
    if data is not None and not corpus.has_own_splits():
        if split is not None:
            raise UserError(f"{data} has no splits of its own (train/valid/test files or dataset splits), so "
                            "all of it is scored; drop --split")
        split = WHOLE
    split = split or default
    text = load_split(corpus, split, tokenizer)
    if text.tokens < 1:
        raise UserError(f"{'the text' if split == WHOLE else f'the {split} split'} of "
                        f"{corpus.cfg.source or 'the corpus'} has no tokens to score")
    return text, split


def evaluate_run(run_dir: Path, split: str | None = None, data: str | None = None, device: str = "auto",
                 batch_size: int | None = None, burn_in: int | None = None) -> EvalResult:
    """Score one run directory on a split (default test) of its own corpus, or of `data` with its
    tokenizer, in `batch_size` rows (default: the run's train.eval_batch_size; 1 = one stream),
    each first reading `burn_in` tokens (default: the run's train.eval_burn_in). `data` without
    splits of its own (a text file, a folder of plain .txt files) is scored whole (split "whole")."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if burn_in is not None and burn_in < 0:
        raise UserError(f"--burn-in must be >= 0, got {burn_in}")
    model, tokenizer, cfg = checkpoint.load_run(run_dir, resolve_device(device))
    text, split = text_to_score(cfg, tokenizer, data, split)
    nll, tokens = score_split(model, text, batch_size or cfg.train.eval_batch_size, cfg.train.bptt,
                              burn_in=cfg.train.eval_burn_in if burn_in is None else burn_in)
    return EvalResult(run=str(run_dir), split=split, tokens=tokens, words=text.words, bytes=text.bytes,
                      nll=nll, params=model.num_parameters(), cell=cfg.model.cell, tokenizer=cfg.tokenizer.model_type,
                      **figures(nll, text))


@dataclass
class LineScore:
    text: str
    tokens: int  # the line's tokens plus its end-of-line (end-of-sequence)
    logprob: float  # natural log-probability of those tokens given the start-of-text state

    @property
    def ppl(self) -> float:
        return perplexity(-self.logprob / self.tokens)

    def as_dict(self) -> dict:
        return {**asdict(self), "ppl": self.ppl}


def line_scores(model, tokenizer: Tokenizer, bptt: int, lines: list[str], batch_size: int = 32) -> list[LineScore]:
    """Each line scored on its own, as a document: [eos] line [eos], every target predicted from
    the start-of-text state. The same NLL `eval` gives a one-line split. Lines are batched
    longest first, padded on the right (a recurrent model never sees the padding of its row)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
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
        for i, nll in zip(rows, token_nll(model, x, y, bptt).double().sum(dim=1).tolist()):
            logprobs[i] = -nll
    return [LineScore(line, len(seq) - 1, logprob) for line, seq, logprob in zip(lines, sequences, logprobs)]
