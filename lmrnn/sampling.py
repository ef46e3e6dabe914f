"""Decoding maths, small and pure: the options, the logits processors and the next-token draw.

Order of application at each step (the order of Hugging Face `generate()`):

    raw logits (B, V)
      -> repetition penalty        (Keskar et al. 2019, CTRL)   on tokens already in the sequence
      -> no-repeat-ngram ban       (Paulus et al. 2017)         -inf on tokens that would repeat an n-gram
      -> / temperature
      -> top-k, top-p (Holtzman et al. 2019), min-p (Nguyen et al. 2024)   -inf outside the kept set
      -> argmax (temperature 0) or a draw from the softmax with an explicit torch.Generator
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmrnn.errors import UserError


@dataclass(frozen=True)
class Decoding:
    """How to pick tokens. `temperature=None` means 1.0 for sampling; beam search refuses any
    explicitly set sampling option, since it is deterministic."""
    temperature: float | None = None
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    no_repeat_ngram: int = 0  # 0 = off
    beams: int = 1
    length_penalty: float = 1.0
    num_return: int = 1
    num_samples: int = 1
    max_new_tokens: int = 200

    def __post_init__(self) -> None:
        problems = [
            (self.temperature is not None and not self.temperature >= 0, f"--temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (self.top_k < 0, f"--top-k must be >= 0 (0 = off), got {self.top_k}"),
            (not 0.0 < self.top_p <= 1.0, f"--top-p must be in (0, 1] (1 = off), got {self.top_p}"),
            (not 0.0 <= self.min_p < 1.0, f"--min-p must be in [0, 1) (0 = off), got {self.min_p}"),
            (not self.repetition_penalty > 0, f"--repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}"),
            (self.no_repeat_ngram < 0, f"--no-repeat-ngram must be >= 0 (0 = off), got {self.no_repeat_ngram}"),
            (self.beams < 1, f"--beams must be >= 1, got {self.beams}"),
            (not -10 <= self.length_penalty <= 10, f"--length-penalty must be in [-10, 10], got {self.length_penalty}"),
            (self.num_return < 1, f"--num-return must be >= 1, got {self.num_return}"),
            (self.num_samples < 1, f"--num-samples must be >= 1, got {self.num_samples}"),
            (self.max_new_tokens < 1, f"--max-new-tokens must be >= 1, got {self.max_new_tokens}"),
        ]
        for bad, message in problems:
            if bad:
                raise UserError(message)
        if self.beams > 1:
            sampling = [flag for flag, on in (("--temperature", self.temperature is not None), ("--top-k", self.top_k),
                                              ("--top-p", self.top_p < 1), ("--min-p", self.min_p > 0),
                                              ("--num-samples", self.num_samples > 1)) if on]
            if sampling:
                raise UserError(f"beam search (--beams {self.beams}) is deterministic and does not combine with "
                                f"{', '.join(sampling)}; use --num-return for several beams")
            if self.num_return > self.beams:
                raise UserError(f"--num-return {self.num_return} needs at least as many --beams, got {self.beams}")
        else:
            if self.num_return > 1:
                raise UserError("--num-return needs --beams > 1; for several samples use --num-samples")
            if self.length_penalty != 1.0:
                raise UserError("--length-penalty applies to beam search only; add --beams N")
            if self.greedy and self.num_samples > 1:
                raise UserError(f"--num-samples {self.num_samples} with greedy decoding (--temperature 0) gives "
                                "identical texts; sample with --temperature > 0 or use --beams")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def batch_size(self) -> int:
        return self.beams if self.beams > 1 else self.num_samples


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019): a token already in the sequence has its logit divided
    by `penalty` when positive and multiplied when negative, so penalty > 1 always makes it less
    likely. logits (B, V), seen (B, V) bool -> (B, V)."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


class NgramBlocker:
    """No-repeat-ngram: forbid any token that would complete an n-gram already present in the
    sequence (prompt included). Keeps, per sequence, a map from each (n-1)-gram to the tokens
    seen after it, updated in O(1) per step."""

    def __init__(self, n: int, sequences: list[list[int]]):
        self.n = n
        self.sequences = [list(seq) for seq in sequences]
        self.followers: list[dict[tuple[int, ...], set[int]]] = [{} for _ in sequences]
        for row, seq in enumerate(self.sequences):
            for end in range(n, len(seq) + 1):
                self.followers[row].setdefault(tuple(seq[end - n:end - 1]), set()).add(seq[end - 1])

    def append(self, tokens: list[int]) -> None:
        for row, token in enumerate(tokens):
            seq = self.sequences[row]
            seq.append(token)
            if len(seq) >= self.n:
                self.followers[row].setdefault(tuple(seq[-self.n:-1]), set()).add(token)

    def reorder(self, rows: list[int]) -> None:
        """Beam search keeps some rows and duplicates others: row i becomes old row rows[i]."""
        self.sequences = [list(self.sequences[r]) for r in rows]
        self.followers = [{key: set(value) for key, value in self.followers[r].items()} for r in rows]

    def ban(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) with -inf on every banned token."""
        rows, cols = [], []
        for row, seq in enumerate(self.sequences):
            # the last n-1 tokens (none for n = 1: every token seen is banned)
            banned = self.followers[row].get(tuple(seq[max(0, len(seq) - self.n + 1):]), ())
            rows.extend([row] * len(banned))
            cols.extend(banned)
        if not rows:
            return logits
        logits = logits.clone()
        logits[rows, cols] = float("-inf")
        return logits


NUCLEUS_CANDIDATES = 256  # top-p looks for its nucleus among these first: a partial sort, not a full one


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k; then outside the nucleus, the smallest set of
    most likely tokens whose probability reaches `top_p` (Holtzman et al. 2019); then every token
    less likely than `min_p` times the most likely one (Nguyen et al. 2024). (B, V) -> (B, V).
    The most likely token always stays."""
    V = logits.size(-1)
    restricted = 0 < top_k < V
    if restricted or top_p < 1.0:
        values, order = logits.topk(top_k if restricted else min(V, NUCLEUS_CANDIDATES), dim=-1)  # descending
        if top_p < 1.0:
            probs = values.softmax(dim=-1) if restricted else (values - logits.logsumexp(dim=-1, keepdim=True)).exp()
            cumulative = probs.cumsum(dim=-1)
            if not restricted and values.size(-1) < V and bool((cumulative[..., -1] < top_p).any()):
                values, order = logits.sort(dim=-1, descending=True)  # a nucleus wider than the candidates
                probs = values.softmax(dim=-1)
                cumulative = probs.cumsum(dim=-1)
            # drop a token when the tokens ranked above it already reach top_p; the first always stays
            values = values.masked_fill(cumulative - probs >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, values)
    if min_p > 0.0:
        # p_i < min_p * p_max  <=>  logit_i < logit_max + ln(min_p): no softmax needed
        threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of probs (B, V), by inverting the cumulative distribution at one uniform
    number: exact up to the float32 rounding of the cumulative sums (~1e-6). torch.multinomial
    draws V exponentials for one sample instead, about 10x slower on a CPU for 10k tokens.
    Zero-probability tokens are never drawn (their interval is empty)."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, u * cdf[..., -1:], right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


def pick_next(logits: torch.Tensor, decoding: Decoding, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from processed logits (B, V), each row with at least one finite logit:
    argmax when greedy, otherwise a draw from softmax(logits / temperature) after top-k / top-p /
    min-p filtering."""
    if decoding.greedy:
        return logits.argmax(dim=-1)
    temperature = 1.0 if decoding.temperature is None else decoding.temperature
    scaled = logits.float()
    if temperature != 1.0:
        # shift the best logit to 0 first (softmax and the filters do not change): a tiny
        # temperature then sends the others to -inf, never the best to +inf (inf - inf = NaN)
        scaled = (scaled - scaled.max(dim=-1, keepdim=True).values) / temperature
    return draw(filter_logits(scaled, decoding.top_k, decoding.top_p, decoding.min_p).softmax(dim=-1), generator)
