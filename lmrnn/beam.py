"""Beam search over a recurrent LM: N hypotheses advanced together as one batch of N states.

Each step scores every (beam, token) extension and keeps the N best; those that end (at
end-of-sequence, a stop string or the length limit) leave the beam for a finished pool, the rest
stay live (Sutskever, Vinyals & Le 2014). With one beam this is greedy decoding exactly. The
pool is ranked by the length-normalised score

    score = sum of log p(token) / length ** length_penalty          (Wu et al. 2016, GNMT, simplified)

with length counting the end-of-sequence token, as Hugging Face `generate()` does. It stops when
the pool holds N hypotheses that no live beam can still beat (an exact bound, not a heuristic):
log-probabilities only fall as a beam grows, so its best reachable score is its current sum over
the length that favours it most (the longest allowed for length_penalty > 0, the next for <= 0).

A banned token (no-repeat-ngram) scores -inf and is never taken. A beam whose every continuation
is banned is a dead end: it leaves the search without a hypothesis (the log-softmax of its all
-inf row would be NaN, which topk ranks above every real score, so its row is set to -inf). When
every beam dies before one finishes, the search returns a single empty "no_allowed_token" one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from lmrnn.models import RNNLM, Hidden, map_hidden
from lmrnn.sampling import Decoding, NgramBlocker, apply_repetition_penalty


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, the end-of-sequence included when it ended there
    logprob: float  # the model's log-probability of `tokens` (before any penalty)
    score: float | None  # the search score: penalised log-probability / length ** length_penalty
    finish_reason: str  # eos | stop | length | time | no_allowed_token (nothing generated)


def beam_search(model: RNNLM, logits: torch.Tensor, hidden: Hidden, context: list[int], decoding: Decoding,
                eos: int, deadline: float | None = None,
                stopped: Callable[[list[int]], bool] | None = None) -> list[Hypothesis]:
    """The `decoding.num_return` best hypotheses, best first. `logits` (1, V) and `hidden` (batch
    1) are the model's output after the prompt ids `context`; `stopped(tokens)` says whether a
    hypothesis has produced a stop string; `deadline` is a time.monotonic() value."""
    N, alpha, max_len = decoding.beams, decoding.length_penalty, decoding.max_new_tokens
    V = logits.size(-1)
    sums = torch.full((1,), 0.0, device=logits.device)  # (live,) penalised log-prob sums
    raw_sums = [0.0]
    beams: list[list[int]] = [[]]
    blocker = NgramBlocker(decoding.no_repeat_ngram, [context]) if decoding.no_repeat_ngram else None
    seen = None
    if decoding.repetition_penalty != 1.0:
        seen = torch.zeros(1, V, dtype=torch.bool, device=logits.device)
        seen[0, context] = True
    finished: list[Hypothesis] = []

    for length in range(1, max_len + 1):
        processed = logits.float()
        if seen is not None:
            processed = apply_repetition_penalty(processed, seen, decoding.repetition_penalty)
        if blocker is not None:
            processed = blocker.ban(processed)
        raw = logits.float().log_softmax(dim=-1)  # (live, V)
        allowed = processed.log_softmax(dim=-1).masked_fill(processed == -math.inf, -math.inf)  # no NaN rows
        candidates = (sums[:, None] + allowed).view(-1)  # (live * V,)
        top, flat = candidates.topk(min(N, candidates.numel()))
        out_of_time = deadline is not None and time.monotonic() > deadline
        keep_rows, keep_tokens, keep_sums, keep_raw = [], [], [], []
        raw_top = raw.view(-1)[flat].tolist()  # one transfer, not one per candidate
        for score, index, raw_logprob in zip(top.tolist(), flat.tolist(), raw_top):
            if score == -math.inf:
                break
            row, token = divmod(index, V)
            tokens = beams[row] + [token]
            raw_sum = raw_sums[row] + raw_logprob
            reason = ("eos" if token == eos else "stop" if stopped is not None and stopped(tokens)
                      else "length" if length == max_len else "time" if out_of_time else None)
            if reason is not None:
                finished.append(Hypothesis(tokens, raw_sum, score / length ** alpha, reason))
                continue
            keep_rows.append(row)
            keep_tokens.append(token)
            keep_sums.append(score)
            keep_raw.append(raw_sum)
        finished = sorted(finished, key=lambda h: h.score, reverse=True)[:N]
        if not keep_rows:
            break
        best_reachable = max(keep_sums) / (max_len if alpha > 0 else length + 1) ** alpha
        if len(finished) == N and best_reachable <= finished[-1].score:
            break
        rows = torch.tensor(keep_rows, device=logits.device)
        hidden = map_hidden(hidden, lambda h: h.index_select(1, rows))  # (L, live, H)
        beams = [beams[r] + [t] for r, t in zip(keep_rows, keep_tokens)]
        sums, raw_sums = torch.tensor(keep_sums, device=logits.device), keep_raw
        next_tokens = torch.tensor(keep_tokens, device=logits.device)
        if seen is not None:
            seen = seen[rows]
            seen[torch.arange(len(keep_rows), device=logits.device), next_tokens] = True
        if blocker is not None:
            blocker.reorder(keep_rows)
            blocker.append(keep_tokens)
        logits, hidden = model(next_tokens[:, None], hidden)
        logits = logits[:, -1]  # (live, V)
    if not finished:  # every beam reached a dead end
        return [Hypothesis([], 0.0, None, "no_allowed_token")]
    return finished[:decoding.num_return]
