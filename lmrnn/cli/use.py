"""lmrnn generate, lmrnn score, lmrnn eval: using trained runs."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from lmrnn.cli import app, user_errors
from lmrnn.cli.options import DeviceOpt, JsonOpt
from lmrnn.cli.text_io import keyboard_prompts, read_prompt, read_text, write
from lmrnn.console import print_table, stderr
from lmrnn.errors import UserError


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `lmrnn train`.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text to continue; lines are documents. Without it (or --prompt-file), piped stdin, else the start of text.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(help="Read the prompt from this file ('-' = stdin); one final newline is dropped.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate at most.")] = 200,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", help="0 = greedy; higher = more random. [default: 1]")] = None,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens only (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: smallest set with probability >= p (1 = off).")] = 1.0,
    min_p: Annotated[float, typer.Option(help="Drop tokens less likely than min-p times the most likely one (0 = off).")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option(help="> 1 makes tokens already in the text less likely (1 = off).")] = 1.0,
    no_repeat_ngram: Annotated[int, typer.Option(help="Never repeat an n-gram of this size (0 = off).")] = 0,
    beams: Annotated[int, typer.Option(help="Beam search with this many beams (1 = off); deterministic.")] = 1,
    length_penalty: Annotated[float, typer.Option(help="Beam score = log p / length^this: > 0 favours longer texts.")] = 1.0,
    num_return: Annotated[int, typer.Option(help="With --beams: how many of the best beams to print.")] = 1,
    num_samples: Annotated[int, typer.Option(help="Independent samples, drawn as one batch; printed as blocks separated by a blank line.")] = 1,
    stop: Annotated[Optional[list[str]], typer.Option(help="End when the text contains this string, which is cut off (repeatable; \\n and \\t are understood).")] = None,
    max_seconds: Annotated[Optional[float], typer.Option(help="End after this many seconds.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed, options, model and device give the same text.")] = None,
    stop_at_eos: Annotated[bool, typer.Option("--stop-at-eos/--no-stop-at-eos", help="End at the first end-of-sequence; otherwise it starts a new line.")] = True,
    echo: Annotated[bool, typer.Option("--echo/--no-echo", help="Print the prompt before its continuation.")] = True,
    json_: Annotated[bool, typer.Option("--json", help="Print the prompt, continuations, token counts and log-probabilities as JSON.")] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Read prompts line by line, keeping the model loaded; Ctrl-D quits.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Continue a prompt with a trained model. The text streams to stdout as it is generated;
    nothing else goes there."""
    from lmrnn.api import load
    from lmrnn.sampling import Decoding

    with user_errors():
        decoding = Decoding(temperature, top_k, top_p, min_p, repetition_penalty, no_repeat_ngram, beams,
                            length_penalty, num_return, num_samples, max_new_tokens)
        if prompt is not None and prompt_file is not None:
            raise UserError("give the prompt once: --prompt or --prompt-file")
        if interactive and (prompt is not None or prompt_file is not None or json_):
            raise UserError("--interactive reads its prompts from the keyboard; drop --prompt, --prompt-file and --json")
        stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in stop or []]
        lm = load(run_dir, device)
        rng = lm.random_generator(seed)  # one stream of draws over every prompt of an --interactive session
        stream = decoding.batch_size == 1 and not json_

        def run(text: str) -> None:
            if stream and echo:
                write(text)
            generation = lm.complete(text, **asdict(decoding), stop=stops, stop_at_eos=stop_at_eos,
                                     max_seconds=max_seconds, rng=rng, on_text=write if stream else None)
            if json_:
                write(json.dumps({"run": str(run_dir), "seed": seed, "decoding": asdict(decoding),
                                   **generation.as_dict()}, indent=2) + "\n")
            elif stream:
                write("\n")
            else:
                write("\n\n".join((text if echo else "") + c.text for c in generation.continuations) + "\n")

        if not interactive:
            run(read_prompt(prompt, prompt_file))
            return
        for line in keyboard_prompts():
            try:
                run(line)
            except KeyboardInterrupt:  # stops this text, not the session
                write("\n")


@app.command()
def score(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `lmrnn train`.")],
    text_file: Annotated[Path, typer.Option(help="Lines to score ('-' = stdin).")] = Path("-"),
    batch_size: Annotated[int, typer.Option(help="Lines scored side by side.")] = 32,
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Log-probability, token count and perplexity of each line, each scored on its own from the
    start-of-text state with its end-of-line included: sentence scoring and reranking."""
    from lmrnn.api import load

    with user_errors():
        text = read_text(text_file)
        scores = load(run_dir, device).score(text.removesuffix("\n").split("\n") if text else [], batch_size)
    if json_:
        write(json.dumps([s.as_dict() for s in scores], indent=2) + "\n")
        return
    tokens, logprob = sum(s.tokens for s in scores), sum(s.logprob for s in scores)
    print_table(f"{len(scores)} lines, {tokens:,} tokens: log-probability {logprob:.2f}, "
                f"ppl {math.exp(min(-logprob / tokens, 700)):.2f}",
                ["line", "tokens", "logprob", "ppl", "text"],
                [[str(i), str(s.tokens), f"{s.logprob:.3f}", f"{s.ppl:.2f}", s.text[:60]] for i, s in enumerate(scores, 1)])


@app.command("eval")
def eval_(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories, compared side by side.")],
    data: Annotated[Optional[str], typer.Option(help="Evaluate on this corpus instead, with each run's own tokenizer; a text file, or a folder without train/valid/test files, is scored whole.")] = None,
    split: Annotated[Optional[Literal["train", "validation", "test"]], typer.Option(help="Which split to score (default: test), where the corpus has splits.")] = None,
    json_: JsonOpt = False,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows scored side by side (default: the run's train.eval_batch_size; 1 = one stream).")] = None,
    burn_in: Annotated[Optional[int], typer.Option(help="Tokens each row reads, unscored, from the stream before it, so that the figure does not depend on --batch-size (default: the run's train.eval_burn_in; 0 = each row from the zero state).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the runs' learning curves (from metrics.jsonl) into this PNG.")] = None,
    cache: Annotated[bool, typer.Option("--cache", help="Also the continuous cache (Grave et al. 2017), tuned on validation, on test.")] = False,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Also dynamic evaluation (Krause et al. 2018), tuned on validation, on test.")] = False,
    cache_window: Annotated[int, typer.Option(help="--cache: how many previous positions the cache holds.")] = 500,
    device: DeviceOpt = "auto",
) -> None:
    """Exact perplexity of whole splits: token and word perplexity, bits per byte."""
    from lmrnn.evaluate import evaluate_run

    if cache or dynamic:
        return _eval_adapted(run_dirs, data, split or "test", batch_size is not None or burn_in is not None, cache, dynamic,
                             cache_window, json_, device)
    with user_errors():
        results = [evaluate_run(run_dir, split, data, device, batch_size, burn_in) for run_dir in run_dirs]
        if plot is not None:
            from lmrnn.checkpoint import read_metrics
            from lmrnn.report import plot_learning_curves
            plot_learning_curves([(str(d), str(d), read_metrics(d)) for d in run_dirs], plot)
            stderr.print(f"learning curves: {plot}", highlight=False, soft_wrap=True)
    if json_:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    scored = results[0].split
    per_char = any(r.tokenizer == "char" for r in results)  # char-rnn's figure, for character-level runs
    print_table(f"all of {data}" if scored == "whole" else f"{scored} split" + (f" of {data}" if data else ""),
                ["run", "cell", "params", "tokens", "ppl", "word ppl", "bits/byte"] + ["bits/char"] * per_char,
                [[r.run, r.cell, f"{r.params:,}", f"{r.tokens:,}", f"{r.ppl:.2f}", f"{r.word_ppl:.2f}",
                  f"{r.bits_per_byte:.4f}"] + [f"{r.bits_per_char:.4f}"] * per_char for r in results])


def _eval_adapted(run_dirs: list[Path], data: Optional[str], split: str, rows_given: bool, cache: bool,
                  dynamic: bool, cache_window: int, json_: bool, device: str) -> None:
    """eval --cache / --dynamic: static and adapted figures on test, settings picked on validation."""
    from lmrnn.adaptation import adapted_rows

    with user_errors():
        if split != "test" or rows_given:
            raise UserError("--cache and --dynamic tune on validation and report test, reading it as one "
                            "stream; drop --split, --batch-size and --burn-in")
        rows = [row for run_dir in run_dirs for row in adapted_rows(run_dir, cache, dynamic, cache_window, device, data)]
    if json_:
        write(json.dumps(rows, indent=2) + "\n")
        return
    whole = rows[0]["test_split"] == "whole"
    picked_on = "each run's own validation split" if whole else "validation"
    print_table(f"{f'all of {data}' if whole else 'test split'}, one stream; cache and dynamic settings picked on {picked_on}",
                ["run", "method", "settings", "val ppl", "test ppl", "test word ppl", "bits/byte", "test ppl change"],
                [[r["run"], r["method"], " ".join(f"{k} {v:g}" for k, v in r["settings"].items()),
                  f"{r['validation_ppl']:.2f}", f"{r['test_ppl']:.2f}", f"{r['test_word_ppl']:.2f}",
                  f"{r['test_bits_per_byte']:.4f}", "" if r["method"] == "static" else f"{-100 * r['gain']:+.1f}%"]
                 for r in rows])


@app.command()
def inspect(
    run_dir: Annotated[Path, typer.Argument(help="A recurrent run directory written by `lmrnn train`.")],
    text: Annotated[Path, typer.Option(help="The text to read ('-' = stdin); its lines are documents.")] = Path("-"),
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML page to write.")] = Path("inspect.html"),
    layer: Annotated[int, typer.Option(help="Which layer's states to show (-1 = the top one).")] = -1,
    max_tokens: Annotated[int, typer.Option(help="Refuse a longer text (the page holds every state).")] = 5000,
    device: DeviceOpt = "auto",
) -> None:
    """One self-contained HTML page of the run reading TEXT: each token coloured by a unit's
    state after it (the LSTM's cell state, the others' hidden state) or by its surprisal, with
    the model's top guesses on hover and the units that best track quotes, brackets, line
    position and word starts."""
    from lmrnn.inspector import inspect_run

    with user_errors():
        if max_tokens < 1:
            raise UserError(f"--max-tokens must be >= 1, got {max_tokens}")
        shown = inspect_run(run_dir, read_text(text), out, layer, max_tokens, device)
    print_table(f"{out}: {shown['tokens']:,} tokens of {shown['cell']} layer {shown['layer']}, perplexity {shown['ppl']:.2f}",
                ["feature", "unit that tracks it best", "r"],
                [[found["feature"], str(found["unit"]), f"{found['r']:+.3f}"] for found in shown["tracking"]])


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A recurrent run directory written by `lmrnn train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to write model.onnx, tokenizer.model and lmrnn.json to.")],
    format_: Annotated[Literal["onnx"], typer.Option("--format", help="The export format.")] = "onnx",
    overwrite: Annotated[bool, typer.Option(help="Replace what --out holds.")] = False,
) -> None:
    """The model's step as ONNX (ids and state in, logits and state out; any batch and length),
    with the tokenizer: to run without PyTorch. Checked against PyTorch with onnxruntime when it
    is installed (pip install 'lmrnn[onnx]')."""
    from lmrnn.export import export_onnx, verify

    with user_errors():
        meta = export_onnx(run_dir, out, overwrite)
    stderr.print(f"wrote {out}: {meta['cell']}, {meta['layers']} x {meta['hidden_size']}, {meta['vocab_size']:,} tokens",
                 highlight=False, soft_wrap=True)
    if importlib.util.find_spec("onnxruntime") is None:
        stderr.print("onnxruntime is not installed: not checked (pip install 'lmrnn[onnx]')", highlight=False)
        return
    stderr.print(f"onnxruntime against PyTorch: largest logit difference {verify(run_dir, out):.2e}", highlight=False)


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `lmrnn train`.")],
    host: Annotated[str, typer.Option(help="Interface to listen on; 127.0.0.1 (loopback) keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_tokens: Annotated[int, typer.Option(help="The most tokens one completion may ask for.")] = 1024,
    max_prompt_chars: Annotated[int, typer.Option(help="The longest prompt (characters) a request may send.")] = 20_000,
    batch_rows: Annotated[int, typer.Option(help="Completions in flight are decoded together, up to this many rows "
                                                 "per model step; 0 decodes each request alone.")] = 64,
    device: DeviceOpt = "auto",
) -> None:
    """A JSON HTTP API over the run: POST /v1/completions (OpenAI's shape, streaming as
    server-sent events), POST /v1/score, GET /health (pip install 'lmrnn[serve]')."""
    with user_errors():
        if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
            raise UserError("lmrnn serve needs FastAPI and uvicorn: pip install 'lmrnn[serve]'")
        if not (0 < port < 65536 and max_tokens >= 1 and max_prompt_chars >= 1 and batch_rows >= 0):
            raise UserError("--port must be in 1..65535, --max-tokens and --max-prompt-chars >= 1, --batch-rows >= 0")
        from lmrnn.server import Limits, serve as run_server

        stderr.print(f"serving {run_dir} on http://{host}:{port} (POST /v1/completions, POST /v1/score, GET /health)",
                     highlight=False, soft_wrap=True)
        run_server(run_dir, host, port, device, Limits(max_tokens=max_tokens, max_prompt_chars=max_prompt_chars,
                                                            batch_rows=batch_rows))
