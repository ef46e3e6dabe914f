"""Text generation: the sampling maths (small, pure) and the token-by-token loop.

The prompt is fed once; after that each new token is fed alone with the carried hidden state,
so an RNN never re-reads its prefix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lmrnn import checkpoint
from lmrnn.errors import UserError
from lmrnn.runtime import resolve_device

log = logging.getLogger(__name__)


def check_sampling(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> None:
    if temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1] (1 = off), got {top_p}")
    if max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, then outside the nucleus: the smallest set of
    most likely tokens whose probability sums to at least `top_p` (Holtzman et al. 2019).
    logits (..., V) -> (..., V)."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p; the first always stays
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None,
                top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Next token ids from logits (B, V) -> (B,): argmax when temperature == 0, otherwise a
    draw from softmax(logits / temperature) after top-k / top-p filtering."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def generate_text(run_dir: Path, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True,
                  device: str = "auto") -> str:
    """The prompt followed by its continuation, decoded. With `stop_at_eos`, generation ends at
    the first end-of-sequence; otherwise each one starts a new line."""
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    model, tokenizer, _ = checkpoint.load_run(run_dir, resolve_device(device))
    generator = torch.Generator()
    if seed is None:
        generator.seed()  # a fresh random seed
    else:
        generator.manual_seed(seed)
    eos = tokenizer.eos_id
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        log.info("empty prompt: generating from the start-of-text state")
    # The training stream puts an end-of-sequence before every document, so the state after
    # reading it is the model's start-of-text state.
    ids = torch.tensor([[eos] + prompt_ids], device=next(model.parameters()).device)  # (1, 1 + P)
    lines, current = [], list(prompt_ids)
    with torch.inference_mode():
        logits, hidden = model(ids)  # the whole prompt, once
        for _ in range(max_new_tokens):
            token = sample_next(logits[:, -1], temperature, generator, top_k, top_p)  # (1,)
            if token.item() == eos:
                if stop_at_eos:
                    break
                lines.append(current)
                current = []
            else:
                current.append(token.item())
            logits, hidden = model(token.view(1, 1), hidden)
    lines.append(current)
    return "\n".join(tokenizer.decode(line) for line in lines)
