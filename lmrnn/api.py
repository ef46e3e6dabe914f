"""The Python API: a trained run as an object, and training from Python. The CLI's generate and
score are this, and `lmrnn` exports it without importing torch until it is used.

    import lmrnn
    lm = lmrnn.load("checkpoints/ptb-lstm", device="cpu")
    lm.generate("the company said", max_new_tokens=40, temperature=0.8, top_p=0.9, seed=1)  # -> str
    for piece in lm.stream("the company said", max_new_tokens=40):                          # as it comes
        print(piece, end="")
    lm.score(["the company said it", "it said company the"])    # per line: log-prob, tokens, ppl
    lm.perplexity(open("valid.txt").read())                     # exact, one stream, as `lmrnn eval`
    summary = lmrnn.fit("corpus.txt", cell="gru", out="checkpoints/g", overrides={"train.max_steps": 500})

Generation options are `lmrnn generate`'s (lmrnn.sampling.Decoding); a seed makes a text
repeatable, on the same device, and gives the CLI's text for the same options.
"""

from __future__ import annotations

import math
import queue
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from lmrnn.batcher import Batcher
from lmrnn.data import encode_documents
from lmrnn.evaluate import EvalResult, LineScore, evaluate_run, line_scores, score_split
from lmrnn.generate import Generation, TextGenerator
from lmrnn.sampling import Decoding


class LanguageModel:
    """A run directory loaded once: its model, tokenizer and config, on one device."""

    def __init__(self, run_dir: str | Path, device: str = "auto", batch_rows: int = 0):
        """`batch_rows` > 0: calls from many threads at once are decoded together, up to that many
        rows per model step (lmrnn.batcher; `lmrnn serve` does this). A seeded text is then the
        same as alone up to float rounding, which depends on the batch (about 1e-6 in a logit)."""
        self.run_dir = Path(run_dir)
        self._generator = TextGenerator(self.run_dir, device)
        self.batcher = Batcher(self._generator, batch_rows) if batch_rows else None
        self._decode = self.batcher.generate if self.batcher else self._generator.generate
        self.model, self.tokenizer, self.config = self._generator.model, self._generator.tokenizer, self._generator.cfg
        self.device = self._generator.device

    def __repr__(self) -> str:
        return (f"LanguageModel({str(self.run_dir)!r}: {self.config.model.cell}, {self.model.num_parameters():,} "
                f"parameters, {self.tokenizer.vocab_size:,} tokens, on {self.device})")

    def complete(self, prompt: str = "", *, max_new_tokens: int = 200, temperature: float | None = None,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 no_repeat_ngram: int = 0, beams: int = 1, length_penalty: float = 1.0, num_return: int = 1,
                 num_samples: int = 1, stop: Sequence[str] = (), stop_at_eos: bool = True,
                 max_seconds: float | None = None, seed: int | None = None, rng: torch.Generator | None = None,
                 on_text=None) -> Generation:
        """Every continuation with its ids, log-probability and finish reason: `num_samples`
        samples, or the `num_return` best of `beams` beams. Draws come from `rng` when given
        (one stream over several calls), else from `seed` (None: fresh entropy). `on_text`
        receives a single sample's text as it is produced."""
        decoding = Decoding(temperature, top_k, top_p, min_p, repetition_penalty, no_repeat_ngram, beams,
                            length_penalty, num_return, num_samples, max_new_tokens)
        return self._decode(prompt, decoding, rng or self.random_generator(seed), stop, stop_at_eos, max_seconds, on_text)

    def random_generator(self, seed: int | None = None) -> torch.Generator:
        """The source of the draws: seeded, or from fresh entropy when `seed` is None."""
        return self._generator.random_generator(seed)

    def generate(self, prompt: str = "", max_new_tokens: int = 200, temperature: float | None = None,
                 **options: Any) -> str:
        """The continuation of `prompt` (the prompt not repeated), with `complete`'s options."""
        return self.complete(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                             **options).continuations[0].text

    def stream(self, prompt: str = "", max_new_tokens: int = 200, temperature: float | None = None,
               **options: Any) -> Iterator[str]:
        """The continuation in pieces as they are generated (whole characters, as the CLI prints
        them); joined, they are `generate`'s text for the same options and seed."""
        for piece in self.stream_completion(prompt, max_new_tokens=max_new_tokens, temperature=temperature, **options):
            if isinstance(piece, str):
                yield piece

    def stream_completion(self, prompt: str = "", **options: Any) -> Iterator[str | Generation]:
        """`complete` of one sample as it happens: its text in pieces, then the Generation (ids,
        log-probability, finish reason). The generation runs in a thread of its own."""
        if options.get("beams", 1) > 1 or options.get("num_samples", 1) > 1:
            raise ValueError("streaming gives one sample; use complete() for beams or several samples")
        pieces: queue.Queue = queue.Queue()
        stopped = threading.Event()  # set when the reader leaves early: the worker then stops too

        def hand_over(piece: str) -> None:
            if stopped.is_set():
                raise _ReaderLeft
            pieces.put(piece)

        def run() -> None:
            try:
                pieces.put(self.complete(prompt, on_text=hand_over, **options))
            except _ReaderLeft:
                pass
            except BaseException as err:  # handed to the reader, raised there
                pieces.put(err)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while True:
                piece = pieces.get()
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
                if isinstance(piece, Generation):
                    return
        finally:
            stopped.set()
            worker.join()

    def score(self, lines: Sequence[str], batch_size: int = 32) -> list[LineScore]:
        """Each line's log-probability (nats), token count (its end included) and perplexity,
        scored on its own from the start-of-text state: `lmrnn score`."""
        return line_scores(self.model, self.tokenizer, self.config.train.bptt, list(lines), batch_size)

    def perplexity(self, text: str) -> float:
        """Token perplexity of `text` (its lines are documents) read as one stream: exactly what
        `lmrnn eval --data FILE --batch-size 1` reports for a file holding it."""
        split = encode_documents(text.removesuffix("\n").split("\n"), self.tokenizer)
        if split.tokens < 1:
            raise ValueError("the text has no tokens to score")
        with torch.inference_mode():
            nll, tokens = score_split(self.model, split, 1, self.config.train.bptt)
        return math.exp(nll / tokens)

    def evaluate(self, split: str | None = None, data: str | None = None, batch_size: int | None = None,
                 burn_in: int | None = None) -> EvalResult:
        """`lmrnn eval` of this run: a split (default test) of its corpus or of `data`."""
        return evaluate_run(self.run_dir, split, data, str(self.device), batch_size, burn_in)


class _ReaderLeft(Exception):
    """Raised inside a streaming generation whose reader has stopped reading: it ends the work."""


def load(run_dir: str | Path, device: str = "auto", batch_rows: int = 0) -> LanguageModel:
    """A run directory written by `lmrnn train` or `lmrnn compare`, ready to use (`batch_rows`:
    LanguageModel's)."""
    return LanguageModel(run_dir, device, batch_rows)


def fit(data: str | Path | None = None, *, cell: str | None = None, out: str | Path | None = None,
        config: str | Path | None = None, overrides: dict[str, Any] | None = None, resume: bool = False,
        overwrite: bool = False, progress: bool = False) -> dict:
    """`lmrnn train` from Python: train (or with `resume` continue) a run and return its summary.
    `overrides` are config keys, {"train.max_steps": 500, "model.hidden_size": 512}; `config` a
    preset such as configs/small.yaml. The run directory defaults to checkpoints/<corpus>-<cell>."""
    from lmrnn import checkpoint
    from lmrnn.config_parser import load_config
    from lmrnn.console import TrainingProgress
    from lmrnn.train import default_run_dir, train

    flags = {**({"data.source": str(data)} if data is not None else {}), **({"model.cell": cell} if cell else {}),
             **(overrides or {})}
    if resume:
        if out is None or config is not None:
            raise ValueError("resume continues the run in `out` with its own config: give `out`, not `config`")
        cfg = checkpoint.resume_config(Path(out), [], flags)
    else:
        cfg = load_config(config, [], flags)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    return train(cfg, run_dir, resume=resume, overwrite=overwrite, progress=TrainingProgress(enabled=progress))
