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
from lmrnn.models import Hidden, map_hidden
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


class Sampler:
    """One prompt's sampled decoding between model steps: B = num_samples rows, each with its
    text, stop strings and finish reason. `pick` chooses every row's next token from `logits`
    (B, V); the caller feeds those to the model with `hidden` and sets both to what comes back.
    TextGenerator steps one sampler alone, Batcher many together. A finished row rides along
    (its tokens ignored) until every row is done. A row whose every next token is banned ends
    there ("no_allowed_token"), never emitting one of them."""

    def __init__(self, prompt: str, context: list[int], logits: torch.Tensor, hidden: Hidden, decoding: Decoding,
                 generator: torch.Generator, eos: int | None, deadline: float | None, streams: list[TextStream],
                 on_text: Callable[[str], None] | None):
        B = len(streams)
        self.prompt, self.prompt_tokens, self.logits, self.hidden = prompt, len(context) - 1, logits, hidden
        self.decoding, self.generator, self.eos, self.deadline = decoding, generator, eos, deadline
        self.streams, self.on_text = streams, on_text
        self.seen = self.blocker = None
        if decoding.repetition_penalty != 1.0:
            self.seen = torch.zeros_like(logits, dtype=torch.bool)
            self.seen[:, context] = True
        if decoding.no_repeat_ngram:
            self.blocker = NgramBlocker(decoding.no_repeat_ngram, [context] * B)
        self.rows = torch.arange(B, device=logits.device)
        self.logprobs = torch.zeros(B, device=logits.device)  # summed over each row's live steps
        self.live = torch.ones(B, device=logits.device)
        self.generated: list[list[int]] = [[] for _ in range(B)]
        self.reasons: list[str | None] = [None] * B
        self.steps = 0

    @property
    def num_rows(self) -> int:
        return len(self.streams)

    def pick(self) -> torch.Tensor | None:
        """Every row's next token (B,) to feed to the model, or None when the decoding is over."""
        decoding, reasons, B = self.decoding, self.reasons, self.num_rows
        processed = self.logits
        if self.seen is not None:
            processed = apply_repetition_penalty(processed, self.seen, decoding.repetition_penalty)
        if self.blocker is not None:
            processed = self.blocker.ban(processed)
            dead_ends = (processed == -float("inf")).all(dim=-1)  # (B,)
            if bool(dead_ends.any()):
                for row in dead_ends.nonzero().flatten().tolist():
                    if reasons[row] is None:
                        log.warning("%s: every next token would repeat a %d-gram (--no-repeat-ngram); it ends "
                                    "after %d tokens", f"sample {row + 1}" if B > 1 else "the continuation",
                                    decoding.no_repeat_ngram, len(self.generated[row]))
                        reasons[row], self.live[row] = "no_allowed_token", 0.0
                if all(reasons):
                    return None
                processed = processed.masked_fill(dead_ends[:, None], 0.0)  # a finished row's draw is ignored
        token = pick_next(processed, decoding, self.generator)  # (B,)
        self.logprobs += self.live * self.logits.float().log_softmax(dim=-1)[self.rows, token]
        for row, tok in enumerate(token.tolist()):
            if reasons[row] is not None:
                continue
            self.generated[row].append(tok)
            if tok == self.eos:
                reasons[row] = "eos"
            else:
                text = self.streams[row].push(tok)
                if self.on_text is not None and text:
                    self.on_text(text)
                if self.streams[row].stopped:
                    reasons[row] = "stop"
            if reasons[row] is not None:
                self.live[row] = 0.0
        self.steps += 1
        if all(reasons) or self.steps == decoding.max_new_tokens:
            return None
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.reasons = [reason or "time" for reason in reasons]
            return None
        if self.seen is not None:
            self.seen[self.rows, token] = True
        if self.blocker is not None:
            self.blocker.append(token.tolist())
        return token

    def generation(self) -> Generation:
        """The continuations, once `pick` has said the decoding is over."""
        results = []
        for row, stream in enumerate(self.streams):
            text = stream.finish()
            if self.on_text is not None and text:
                self.on_text(text)
            results.append(Continuation(stream.text, self.generated[row], self.logprobs[row].item(),
                                        self.reasons[row] or "length"))
        return Generation(self.prompt, self.prompt_tokens, results)


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
        if decoding.beams > 1:
            return self._beams(prompt, decoding, stops, stop_at_eos, max_seconds)
        sampler = self.start(prompt, decoding, generator, stops, stop_at_eos, max_seconds, on_text)
        with torch.inference_mode():
            while (token := sampler.pick()) is not None:
                logits, sampler.hidden = self.model(token[:, None], sampler.hidden)
                sampler.logits = logits[:, -1]
        return sampler.generation()

    def start(self, prompt: str, decoding: Decoding, generator: torch.Generator | None = None,
              stops: Sequence[str] = (), stop_at_eos: bool = True, max_seconds: float | None = None,
              on_text: Callable[[str], None] | None = None) -> Sampler:
        """The prompt read, and its sampled decoding ready to step (`generate`'s options; no beams)."""
        deadline = self._check(decoding, stops, stop_at_eos, max_seconds)
        context, logits, hidden = self._read(prompt)
        B = decoding.num_samples
        if B > 1:
            logits = logits.expand(B, -1)
            hidden = map_hidden(hidden, lambda h: h.expand(-1, B, -1).contiguous())  # (L, B, H)
        streams = [self._text_stream(prompt, context, stops) for _ in range(B)]
        return Sampler(prompt, context, logits, hidden, decoding, generator or self.random_generator(None),
                       self.tokenizer.eos_id if stop_at_eos else None, deadline, streams, on_text)

    def _check(self, decoding: Decoding, stops: Sequence[str], stop_at_eos: bool,
               max_seconds: float | None) -> float | None:
        """The options' errors; the deadline of `max_seconds` from now."""
        if any(not s for s in stops):
            raise UserError("--stop must not be empty")
        if max_seconds is not None and not max_seconds > 0:
            raise UserError(f"--max-seconds must be > 0, got {max_seconds}")
        if decoding.beams > 1 and not stop_at_eos:
            raise UserError("beam search ends each hypothesis at end-of-sequence; drop --no-stop-at-eos")
        return time.monotonic() + max_seconds if max_seconds is not None else None

    def _read(self, prompt: str) -> tuple[list[int], torch.Tensor, Hidden]:
        """The prompt's ids, the logits (1, V) after it and the state: the whole prompt in one call."""
        context = self.prompt_ids(prompt)
        with torch.inference_mode():
            logits, hidden = self.model(torch.tensor([context], device=self.device))
        logits = logits[:, -1]  # (1, V)
        if not bool(torch.isfinite(logits).all()):
            raise UserError("the model's outputs after the prompt are not finite numbers: its weights are "
                            "broken (a diverged run?); generate from another checkpoint")
        return context, logits, hidden

    def _text_stream(self, prompt: str, context: list[int], stops: Sequence[str]) -> TextStream:
        last_line = context[len(context) - context[::-1].index(self.tokenizer.eos_id):]
        return TextStream(self.tokenizer, last_line, stops, strip_space=prompt[-1:] in (" ", "\t"))

    def _beams(self, prompt: str, decoding: Decoding, stops: Sequence[str], stop_at_eos: bool,
               max_seconds: float | None) -> Generation:
        deadline = self._check(decoding, stops, stop_at_eos, max_seconds)
        context, logits, hidden = self._read(prompt)
        template = self._text_stream(prompt, context, stops)
        line, start = template.ids, len(self.tokenizer.decode(template.ids))

        def stopped(tokens: list[int]) -> bool:  # one decode per candidate: no eos inside a live beam
            text = self.tokenizer.decode(line + tokens)[start:]
            return any(s in text for s in template.stops)

        with torch.inference_mode():
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
            text = self._text_stream(prompt, context, stops)
            for token in hypothesis.tokens[:-1] if hypothesis.finish_reason == "eos" else hypothesis.tokens:
                text.push(token)
            text.finish()
            results.append(Continuation(text.text, hypothesis.tokens, hypothesis.logprob,
                                        hypothesis.finish_reason, hypothesis.score))
        return Generation(prompt, len(context) - 1, results)

