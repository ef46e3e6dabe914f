"""Text generation from a run: prompts in, continuations out, streamed as whole characters.

The prompt is fed in one call; after that each new token is fed alone with the carried hidden
state, so an RNN never re-reads its prefix. The decoding maths lives in `sampling` and `beam`.

A prompt's lines are documents, as in training: the ids are [eos] line1 [eos] line2 ..., where
the leading end-of-sequence gives the model its start-of-text state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from lmrnn import checkpoint
from lmrnn.beam import beam_search
from lmrnn.errors import UserError
from lmrnn.models import map_hidden
from lmrnn.runtime import resolve_device
from lmrnn.sampling import Decoding, NgramBlocker, apply_repetition_penalty, pick_next
from lmrnn.text_stream import TextStream

log = logging.getLogger(__name__)

@dataclass
class Continuation:
    text: str  # the generated text alone, cut before a stop string
    ids: list[int]  # the generated ids, an ending end-of-sequence included
    logprob: float  # the model's log-probability of those ids (nats, before penalties)
    finish_reason: str  # eos | stop | length | time | no_allowed_token (every next token was banned)
    score: float | None = None  # beam search's length-normalised score

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, **{key: value for key, value in asdict(self).items() if value is not None}}


@dataclass
class Generation:
    prompt: str
    prompt_tokens: int  # the prompt's ids, the start-of-text end-of-sequence not counted
    continuations: list[Continuation]

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "prompt_tokens": self.prompt_tokens,
                "continuations": [c.as_dict() for c in self.continuations]}


class TextGenerator:
    """A run loaded once (model, tokenizer, device), continuing any number of prompts."""

    def __init__(self, run_dir: Path, device: str = "auto"):
        self.model, self.tokenizer, self.cfg = checkpoint.load_run(run_dir, resolve_device(device))
        self.device = self.model.device

    def random_generator(self, seed: int | None) -> torch.Generator:
        """The one source of randomness: seeded, or from fresh entropy when `seed` is None."""
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def prompt_ids(self, prompt: str) -> list[int]:
        """[eos] + the prompt's lines joined by eos; says so when there is no prompt, and names
        characters the tokenizer never saw (byte pieces with byte fallback, <unk> without)."""
        eos, sp = self.tokenizer.eos_id, self.tokenizer.sp
        ids = [eos]
        for i, line in enumerate(prompt.split("\n")):
            ids += ([eos] if i else []) + self.tokenizer.encode(line)
        if len(ids) == 1:
            log.info("empty prompt: generating from the start-of-text state")
        elif any(sp.is_byte(i) or sp.is_unknown(i) for i in ids):
            unseen = sorted({c for c in prompt if not c.isspace()
                             and any(sp.is_byte(i) or sp.is_unknown(i) for i in self.tokenizer.encode(c))})
            message, characters = "the prompt has characters the tokenizer never saw, read as %s: %s", " ".join(map(repr, unseen))
            if any(sp.is_byte(i) for i in ids):
                log.info(message, "UTF-8 byte pieces", characters)
            else:
                log.warning(message, "<unk>", characters)
        return ids

    def generate(self, prompt: str, decoding: Decoding, generator: torch.Generator | None = None,
                 stops: Sequence[str] = (), stop_at_eos: bool = True, max_seconds: float | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """Continuations of `prompt`: `decoding.num_samples` samples, or `decoding.num_return`
        beams best first. `on_text` receives the text of a single sample as it is produced."""
        if any(not s for s in stops):
            raise UserError("--stop must not be empty")
        if max_seconds is not None and not max_seconds > 0:
            raise UserError(f"--max-seconds must be > 0, got {max_seconds}")
        if decoding.beams > 1 and not stop_at_eos:
            raise UserError("beam search ends each hypothesis at end-of-sequence; drop --no-stop-at-eos")
        context = self.prompt_ids(prompt)
        deadline = time.monotonic() + max_seconds if max_seconds is not None else None
        last_line = context[len(context) - context[::-1].index(self.tokenizer.eos_id):]
        strip_space = prompt[-1:] in (" ", "\t")

        def stream() -> TextStream:
            return TextStream(self.tokenizer, last_line, stops, strip_space)

        with torch.inference_mode():
            logits, hidden = self.model(torch.tensor([context], device=self.device))  # the whole prompt, once
            logits = logits[:, -1]  # (1, V)
            if not bool(torch.isfinite(logits).all()):
                raise UserError("the model's outputs after the prompt are not finite numbers: its weights are "
                                "broken (a diverged run?); generate from another checkpoint")
            if decoding.beams > 1:
                continuations = self._beams(logits, hidden, context, decoding, deadline, stream)
            else:
                continuations = self._sample(logits, hidden, context, decoding, generator or self.random_generator(None),
                                             stop_at_eos, deadline, [stream() for _ in range(decoding.num_samples)], on_text)
        return Generation(prompt, len(context) - 1, continuations)

    def _sample(self, logits: torch.Tensor, hidden, context: list[int], decoding: Decoding,
                generator: torch.Generator, stop_at_eos: bool, deadline: float | None,
                streams: list[TextStream], on_text: Callable[[str], None] | None) -> list[Continuation]:
        """Greedy or sampled decoding of B = num_samples rows as one batch; a finished row rides
        along (its tokens ignored) until every row is done. A row whose every next token is banned
        ends there ("no_allowed_token"), never emitting one of them."""
        B, eos = len(streams), self.tokenizer.eos_id
        if B > 1:
            logits = logits.expand(B, -1)
            hidden = map_hidden(hidden, lambda h: h.expand(-1, B, -1).contiguous())  # (L, B, H)
        seen = blocker = None
        if decoding.repetition_penalty != 1.0:
            seen = torch.zeros_like(logits, dtype=torch.bool)
            seen[:, context] = True
        if decoding.no_repeat_ngram:
            blocker = NgramBlocker(decoding.no_repeat_ngram, [context] * B)
        rows = torch.arange(B, device=self.device)
        logprobs = torch.zeros(B, device=self.device)  # summed over each row's live steps
        live = torch.ones(B, device=self.device)
        generated: list[list[int]] = [[] for _ in range(B)]
        reasons: list[str | None] = [None] * B
        for step in range(decoding.max_new_tokens):
            processed = logits
            if seen is not None:
                processed = apply_repetition_penalty(processed, seen, decoding.repetition_penalty)
            if blocker is not None:
                processed = blocker.ban(processed)
                dead_ends = (processed == -float("inf")).all(dim=-1)  # (B,)
                if bool(dead_ends.any()):
                    for row in dead_ends.nonzero().flatten().tolist():
                        if reasons[row] is None:
                            log.warning("%s: every next token would repeat a %d-gram (--no-repeat-ngram); it ends "
                                        "after %d tokens", f"sample {row + 1}" if B > 1 else "the continuation",
                                        decoding.no_repeat_ngram, len(generated[row]))
                            reasons[row], live[row] = "no_allowed_token", 0.0
                    if all(reasons):
                        break
                    processed = processed.masked_fill(dead_ends[:, None], 0.0)  # a finished row's draw is ignored
            token = pick_next(processed, decoding, generator)  # (B,)
            logprobs += live * logits.float().log_softmax(dim=-1)[rows, token]
            for row, tok in enumerate(token.tolist()):
                if reasons[row] is not None:
                    continue
                generated[row].append(tok)
                if tok == eos and stop_at_eos:
                    reasons[row] = "eos"
                else:
                    text = streams[row].push(tok)
                    if on_text is not None and text:
                        on_text(text)
                    if streams[row].stopped:
                        reasons[row] = "stop"
                if reasons[row] is not None:
                    live[row] = 0.0
            if all(reasons) or step == decoding.max_new_tokens - 1:
                break
            if deadline is not None and time.monotonic() > deadline:
                reasons = [reason or "time" for reason in reasons]
                break
            if seen is not None:
                seen[rows, token] = True
            if blocker is not None:
                blocker.append(token.tolist())
            logits, hidden = self.model(token[:, None], hidden)
            logits = logits[:, -1]  # (B, V)
        results = []
        for row, stream in enumerate(streams):
            text = stream.finish()
            if on_text is not None and text:
                on_text(text)
            results.append(Continuation(stream.text, generated[row], logprobs[row].item(), reasons[row] or "length"))
        return results

    def _beams(self, logits: torch.Tensor, hidden, context: list[int], decoding: Decoding,
               deadline: float | None, stream: Callable[[], TextStream]) -> list[Continuation]:
        template = stream()
        line, stops = template.ids, template.stops
        start = len(self.tokenizer.decode(line))

        def stopped(tokens: list[int]) -> bool:  # one decode per candidate: no eos inside a live beam
            text = self.tokenizer.decode(line + tokens)[start:]
            return any(s in text for s in stops)

        hypotheses = beam_search(self.model, logits, hidden, context, decoding, self.tokenizer.eos_id,
                                 deadline, stopped if stops else None)
        if hypotheses[0].finish_reason == "no_allowed_token":
            log.warning("every beam reached a token sequence whose every continuation is banned "
                        "(--no-repeat-ngram %d): nothing was generated", decoding.no_repeat_ngram)
        elif len(hypotheses) < decoding.num_return:
            log.warning("only %d of the %d requested beams finished: the others reached a dead end "
                        "(--no-repeat-ngram %d bans every continuation)", len(hypotheses), decoding.num_return,
                        decoding.no_repeat_ngram)
        results = []
        for hypothesis in hypotheses:
            text = stream()
            for token in hypothesis.tokens[:-1] if hypothesis.finish_reason == "eos" else hypothesis.tokens:
                text.push(token)
            text.finish()
            results.append(Continuation(text.text, hypothesis.tokens, hypothesis.logprob,
                                        hypothesis.finish_reason, hypothesis.score))
        return results

