"""Concurrent completions decoded as one batch: the server's generation path.

A recurrent step costs much the same for one row as for dozens (an H x 4H matrix product per
layer either way; benchmarks/serve_load.py has the figures), so one model call per step for
every live row of every request in flight serves concurrent clients far better than one call
per request. A thread of its own owns the model: callers hand in a request and wait for its
Generation. Each request keeps its own Sampler (its options, its seeded generator, its stop
strings), so it gets the text it would get alone; only the rows' states share the model call.
A request joins at the next step and leaves when its last row is done (continuous batching, as
in Orca, Yu et al. 2022), without waiting for the others.

Beam search is not batched: it runs in the caller's thread, as TextGenerator.generate.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable, Sequence

import torch

from lmrnn.generate import Generation, Sampler, TextGenerator
from lmrnn.models import Hidden, map_hidden
from lmrnn.sampling import Decoding


class Batcher:
    """TextGenerator.generate for many threads at once, stepping up to `max_rows` rows together."""

    def __init__(self, text_generator: TextGenerator, max_rows: int = 64):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.text_generator, self.max_rows = text_generator, max_rows
        self._waiting: deque[tuple[Callable[[], Sampler], int, Future]] = deque()
        self._arrived = threading.Condition()
        self.steps = 0  # model calls made, for tests and benchmarks
        self.rows_stepped = 0  # rows those calls carried
        threading.Thread(target=self._run, daemon=True, name="lmrnn-batcher").start()

    def generate(self, prompt: str, decoding: Decoding, generator: torch.Generator | None = None,
                 stops: Sequence[str] = (), stop_at_eos: bool = True, max_seconds: float | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """TextGenerator.generate's continuations, decoded in the shared batch; blocks until done.
        An error of the options, the prompt or `on_text` is raised here, in the caller."""
        if decoding.beams > 1:
            return self.text_generator.generate(prompt, decoding, generator, stops, stop_at_eos, max_seconds, on_text)
        if decoding.num_samples > self.max_rows:
            raise ValueError(f"{decoding.num_samples} samples are more than the batch's {self.max_rows} rows")
        done: Future = Future()
        start = lambda: self.text_generator.start(prompt, decoding, generator, stops, stop_at_eos, max_seconds, on_text)
        with self._arrived:
            self._waiting.append((start, decoding.num_samples, done))
            self._arrived.notify()
        return done.result()

    def _run(self) -> None:
        active: list[tuple[Sampler, Future]] = []
        while True:
            with self._arrived:
                while not self._waiting and not active:
                    self._arrived.wait()
                rows = sum(sampler.num_rows for sampler, _ in active)
                joining = []
                while self._waiting and rows + self._waiting[0][1] <= self.max_rows:
                    joining.append(self._waiting.popleft())
                    rows += joining[-1][1]
            with torch.inference_mode():
                for start, _, done in joining:
                    sampler = _attempt(start, done)
                    if sampler is not None:
                        active.append((sampler, done))
                active = self._step(active)

    def _step(self, active: list[tuple[Sampler, Future]]) -> list[tuple[Sampler, Future]]:
        """Each request's next tokens, then one model call for all that go on; the finished leave."""
        going_on, tokens = [], []
        for sampler, done in active:
            token = _attempt(sampler.pick, done)
            if token is not None:
                going_on.append((sampler, done))
                tokens.append(token)
            elif not done.done():
                _attempt(sampler.generation, done, finish=True)
        if not going_on:
            return []
        samplers = [sampler for sampler, _ in going_on]
        try:
            logits, hidden = self.text_generator.model(torch.cat(tokens)[:, None], join_states([s.hidden for s in samplers]))
        except BaseException as err:  # (out of memory?) every request in the call fails; the thread goes on
            for _, done in going_on:
                done.set_exception(err)
            return []
        self.steps, self.rows_stepped = self.steps + 1, self.rows_stepped + len(logits)
        first = 0
        for sampler in samplers:
            rows = slice(first, first + sampler.num_rows)
            sampler.logits, sampler.hidden = logits[rows, -1], map_hidden(hidden, lambda h: h[:, rows])
            first = rows.stop
        return going_on


def join_states(states: list[Hidden]) -> Hidden:
    """States (L, B_i, ...) side by side as one batch (L, sum B_i, ...): the LSTM's (h, c) pairwise."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states))
    return torch.cat(states, dim=1)


def _attempt(work: Callable, done: Future, finish: bool = False):
    """work()'s result; None, with the error handed to the waiting caller, when it raises. With
    `finish`, the result is the caller's answer."""
    try:
        result = work()
    except BaseException as err:  # a bad prompt or option, or on_text's reader gone: that request ends
        done.set_exception(err)
        return None
    if finish:
        done.set_result(result)
    return result
