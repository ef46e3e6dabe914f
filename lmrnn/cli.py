"""The `lmrnn` command line: thin commands over library functions.

Config precedence (lowest first): built-in defaults < --config YAML < -s/--set key.path=value
< dedicated flags (DATA, --cell, --text-column). Heavy modules (torch, datasets) are imported
inside the commands so that `lmrnn --help` stays instant.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import stat
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional

import typer

from lmrnn import __version__
from lmrnn.config import Cell, load_config
from lmrnn.console import print_table, setup_logging, stderr
from lmrnn.errors import UserError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Recurrent language models (RNN, LSTM, GRU): train, generate, evaluate.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Standalone SentencePiece tokenizers.")
app.add_typer(tokenizer_app, name="tokenizer")
probe_app = typer.Typer(no_args_is_help=True, help="Measure vanishing gradients, context use and recall of trained runs.")
app.add_typer(probe_app, name="probe")

PRECEDENCE = "Precedence: defaults < --config < -s/--set < DATA, --cell, --text-column."
DataArg = Annotated[Optional[str], typer.Argument(
    help="Text file, folder of .txt files (train/valid/test.txt used as splits), folder of "
         "json/csv/parquet files, or Hugging Face dataset name[:config]. Default: the shipped corpus.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML preset, e.g. configs/small.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override one key: -s model.hidden_size=512 (repeatable).")]
TextColumnOpt = Annotated[Optional[str], typer.Option(help="Dataset column holding the text (data.text_column).")]
DeviceOpt = Annotated[Literal["auto", "cpu", "cuda", "mps"], typer.Option(help="Where to run; auto = CUDA, MPS, then CPU.")]
RunsArg = Annotated[list[Path], typer.Argument(help="Run directories written by `lmrnn train` or `lmrnn compare`.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the figures as JSON instead of a table.")]


# exit codes after a stop signal, as a shell reports them (128 + signal number)


def _rank() -> int:
    """The torchrun rank of this process (0 without torchrun): only rank 0 prints results."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def user_errors():
    """A UserError becomes one red line on stderr and exit code 1; a second Ctrl-C (abort at once)
    exits 130 without a traceback; anything else is a bug and raises."""
    try:
        yield
    except UserError as err:
        where = f"rank {_rank()}: " if _rank() else ""
        stderr.print(f"{where}error: {err}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print("aborted", style="red", highlight=False)
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmrnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose, quiet=_rank() > 0)


def _flags(**values) -> dict:
    return {key.replace("__", "."): value for key, value in values.items() if value is not None}


@app.command(help=f"Train a language model and write a run directory. {PRECEDENCE}")
def train(
    data: DataArg = None,
    config: ConfigOpt = None,
    cell: Annotated[Optional[Cell], typer.Option(help="Recurrent cell (model.cell).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory. Default: checkpoints/<corpus>-<cell>.")] = None,
    set_: SetOpt = None,
    text_column: TextColumnOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted or finished run in --out exactly; only stop limits, device, lr, clip norm and log/save intervals may change.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run already in --out.")] = False,
) -> None:
    from lmrnn import checkpoint
    from lmrnn.runtime import STOP_EXIT_CODES
    from lmrnn.train import default_run_dir, train as run_training

    with user_errors():
        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        flags = _flags(data__source=data, model__cell=cell, data__text_column=text_column)
        if resume:
            if config is not None:
                raise UserError("--resume reads the run's own config.yaml; drop --config")
            run_dir = out or default_run_dir(load_config(None, set_ or [], flags))
            cfg = checkpoint.resume_config(run_dir, set_ or [], flags)
        else:
            cfg = load_config(config, set_ or [], flags)
            run_dir = out or default_run_dir(cfg)
        summary = run_training(cfg, run_dir, resume=resume, overwrite=overwrite)
    if _rank():
        raise typer.Exit(STOP_EXIT_CODES.get(summary["stopped_by"], 0))
    print_table(f"run {run_dir}", ["cell", "params", "steps", "tokens/s", "wall", "best val ppl",
                                   "test ppl", "test word ppl", "test bits/byte"],
                [[summary["cell"], f"{summary['params']:,}", f"{summary['steps']:,}",
                  f"{summary['train_tokens_per_second']:,.0f}", _duration(summary["wall_seconds"]),
                  f"{summary['best_val_ppl']:.2f}", f"{summary['test_ppl']:.2f}",
                  f"{summary['test_word_ppl']:.2f}", f"{summary['test_bits_per_byte']:.3f}"]])
    if summary["stopped_by"] in STOP_EXIT_CODES:
        stderr.print(f"stopped ({summary['stopped_by']}): continue with  lmrnn train --resume --out {run_dir}",
                     soft_wrap=True, highlight=False)
        raise typer.Exit(STOP_EXIT_CODES[summary["stopped_by"]])


def run() -> None:
    """The entry point of `lmrnn` and `python -m lmrnn`.

    A torchrun worker leaves with os._exit once everything is written and flushed, skipping the
    interpreter's finalization. Why: the gloo and autograd threads outlive the process group in
    torch 2.x, and when one of them releases a tensor during finalization, taking the GIL ends it
    with pthread_exit inside a noexcept destructor. The rank then aborts after a complete run with
    "terminate called without an active exception" (pytorch/pytorch#190489), now and then, and
    torchrun reports the whole run as failed."""
    try:
        app(prog_name="lmrnn")
    except SystemExit as done:
        if "RANK" not in os.environ:
            raise
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)


def _read_text(path: Path) -> str:
    """A UTF-8 text file, or stdin for '-'."""
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a text file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None


def _stdin_is_piped() -> bool:
    """True when stdin is a pipe or a redirected file (not a terminal, not /dev/null)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):  # replaced by a test runner
        return not sys.stdin.isatty()
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


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
    from lmrnn.generate import TextGenerator
    from lmrnn.sampling import Decoding

    with user_errors():
        decoding = Decoding(temperature, top_k, top_p, min_p, repetition_penalty, no_repeat_ngram, beams,
                            length_penalty, num_return, num_samples, max_new_tokens)
        if prompt is not None and prompt_file is not None:
            raise UserError("give the prompt once: --prompt or --prompt-file")
        if interactive and (prompt is not None or prompt_file is not None or json_):
            raise UserError("--interactive reads its prompts from the keyboard; drop --prompt, --prompt-file and --json")
        stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in stop or []]
        generator = TextGenerator(run_dir, device)
        rng = generator.random_generator(seed)
        stream = decoding.batch_size == 1 and not json_

        def run(text: str) -> None:
            if stream and echo:
                _write(text)
            generation = generator.generate(text, decoding, rng, stops, stop_at_eos, max_seconds,
                                            _write if stream else None)
            if json_:
                _write(json.dumps({"run": str(run_dir), "seed": seed, "decoding": asdict(decoding),
                                   **generation.as_dict()}, indent=2) + "\n")
            elif stream:
                _write("\n")
            else:
                _write("\n\n".join((text if echo else "") + c.text for c in generation.continuations) + "\n")

        if not interactive:
            if prompt_file is not None:
                prompt = _read_text(prompt_file).removesuffix("\n")
            elif prompt is None:
                prompt = sys.stdin.read().removesuffix("\n") if _stdin_is_piped() else ""
            run(prompt)
            return
        stderr.print("a prompt per line; an empty line starts from the start of text; Ctrl-C stops a text, Ctrl-D quits",
                     highlight=False)
        while True:
            stderr.print("> ", end="", highlight=False)
            line = sys.stdin.readline()
            if not line:
                break
            try:
                run(line.removesuffix("\n"))
            except KeyboardInterrupt:
                _write("\n")


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
    from lmrnn.evaluate import score_lines

    with user_errors():
        text = _read_text(text_file)
        scores = score_lines(run_dir, text.removesuffix("\n").split("\n") if text else [], device, batch_size)
    if json_:
        _write(json.dumps([s.as_dict() for s in scores], indent=2) + "\n")
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
        _write(json.dumps(rows, indent=2) + "\n")
        return
    whole = rows[0]["test_split"] == "whole"
    picked_on = "each run's own validation split" if whole else "validation"
    print_table(f"{f'all of {data}' if whole else 'test split'}, one stream; cache and dynamic settings picked on {picked_on}",
                ["run", "method", "settings", "val ppl", "test ppl", "test word ppl", "bits/byte", "test ppl change"],
                [[r["run"], r["method"], " ".join(f"{k} {v:g}" for k, v in r["settings"].items()),
                  f"{r['validation_ppl']:.2f}", f"{r['test_ppl']:.2f}", f"{r['test_word_ppl']:.2f}",
                  f"{r['test_bits_per_byte']:.4f}", "" if r["method"] == "static" else f"{-100 * r['gain']:+.1f}%"]
                 for r in rows])


@app.command(help=f"Train several cells on one corpus under one budget and report them side by side. {PRECEDENCE}")
def compare(
    data: DataArg = None,
    cells: Annotated[str, typer.Option(help="Comma-separated cells: rnn, rnn_relu, lstm, gru, ffnn (feed-forward, model.context tokens), and Kneser-Ney baselines ngram (model.order) or ngramN, e.g. ngram3,ngram5.")] = "rnn,lstm,gru",
    budget_minutes: Annotated[Optional[float], typer.Option(help="Training minutes per run (replaces the config's stop limits).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Training steps per run (replaces the config's stop limits).")] = None,
    match: Annotated[Literal["params", "hidden"], typer.Option(help="params: hidden sizes chosen so parameter counts agree within 2% of the LSTM's (or the first cell's) at model.hidden_size; hidden: the same hidden size.")] = "params",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; several give mean ± spread, 95% intervals and which differences they resolve.")] = "1,2,3",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Comparison folder. Default: comparisons/<corpus>.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    text_column: TextColumnOpt = None,
    tune: Annotated[Optional[list[str]], typer.Option(help="Tune this config key per cell first, by successive halving on validation (repeatable): KEY (train.lr, train.clip_grad_norm, model.dropout, ... have default ranges) or KEY=LOW:HIGH.")] = None,
    trials: Annotated[int, typer.Option(help="--tune: settings tried per cell (the same for every cell).")] = 9,
    overwrite: Annotated[bool, typer.Option(help="Retrain every run of the comparison already in --out.")] = False,
) -> None:
    """Run it again after an interruption: finished runs are kept, the interrupted one resumes."""
    from lmrnn.compare import compare as run_comparison, parse_cells, parse_seeds
    from lmrnn.comparison_report import TABLE, table_rows
    from lmrnn.data import Corpus
    from lmrnn.tuning import parse_knobs

    with user_errors():
        for name, value in (("--budget-minutes", budget_minutes), ("--max-steps", max_steps)):
            if value is not None and value <= 0:
                raise UserError(f"{name} must be > 0, got {value}")
        limits = {}
        if budget_minutes is not None or max_steps is not None:
            limits = {"train.epochs": 0, "train.max_minutes": budget_minutes or 0.0, "train.max_steps": max_steps or 0}
        cfg = load_config(config, set_ or [], {**_flags(data__source=data, data__text_column=text_column), **limits})
        cell_list, seed_list = parse_cells(cells), parse_seeds(seeds)
        knobs = parse_knobs(tune or [], cfg)
        if trials < 1:
            raise UserError(f"--trials must be >= 1, got {trials}")
        folder = out or Path("comparisons") / Corpus(cfg.data).name
        results = run_comparison(cfg, cell_list, seed_list, match, folder, overwrite, knobs=knobs, trials=trials)
    if results.get("interrupted"):
        stderr.print(f"stopped ({results['interrupted']}): run the same command again to continue the comparison "
                     f"in {folder}", soft_wrap=True, highlight=False)
        from lmrnn.runtime import STOP_EXIT_CODES
        raise typer.Exit(STOP_EXIT_CODES[results["interrupted"]])
    print_table(f"{results['corpus']}: {', '.join(cell_list)}, --match {match}, seeds {seeds}", TABLE, table_rows(results))
    stderr.print(f"report: {folder / 'report.md'}", soft_wrap=True, highlight=False)


PlotOpt = Annotated[Path, typer.Option(help="Where to draw the plot (PNG).")]
DataOpt = Annotated[Optional[str], typer.Option(help="Probe this corpus's validation split instead of each run's own.")]


def _probe_output(rows: list[dict], json_: bool, plot: Path, *tables: tuple[str, list[str], Callable]) -> None:
    """The rows as JSON, or one table per (title, columns, row -> cells); then where the plot is."""
    if json_:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for title, columns, cells in tables:
            print_table(title, columns, [cells(row) for row in rows])
    stderr.print(f"plot: {plot}", highlight=False, soft_wrap=True)


def _distance(value: Optional[int], limit: int) -> str:
    return f"> {limit}" if value is None else str(value)


@probe_app.command("gradients")
def probe_gradients(
    run_dirs: RunsArg,
    length: Annotated[int, typer.Option(help="Steps from the first probed state to the loss (T).")] = 200,
    windows: Annotated[int, typer.Option(help="Validation windows averaged over.")] = 64,
    burn_in: Annotated[int, typer.Option(help="Tokens run first (no gradient) so the state is a real one.")] = 100,
    init: Annotated[bool, typer.Option("--init/--no-init", help="Also probe each run's architecture freshly initialised.")] = True,
    data: DataOpt = None,
    plot: PlotOpt = Path("probe-gradients.png"),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """||dL_T/ds_t||: how far back the loss's gradient reaches, against distance (log scale)."""
    from lmrnn.probes import VANISHED, probe_gradients as run_probe

    with user_errors():
        rows = run_probe(run_dirs, length, windows, burn_in, init, data, device, plot)
    marks = [d for d in (1, 10, 50, 100) if d < length]
    _probe_output(rows, json_, plot, (f"gradient norm by distance, relative to distance 1 (vanished: < {VANISHED:g})",
                  ["run", "cell", "model", "|g| at 1", *[f"at {d}" for d in marks[1:]], f"at {length - 1}", "vanished at"],
                  lambda r: [r["run"], r["cell"], r["model"], f"{r['norms'][1]:.3g}",
                             *[f"{r['norms'][d] / r['norms'][1]:.2g}" for d in marks[1:]],
                             f"{r['norms'][-1] / r['norms'][1]:.2g}", _distance(r["vanishing_distance"], length - 1)]))


@probe_app.command("context")
def probe_context(
    run_dirs: RunsArg,
    max_context: Annotated[int, typer.Option(help="Longest context k tried (k = 1, 2, 4, ... and this).")] = 400,
    targets: Annotated[int, typer.Option(help="Validation tokens scored for each k.")] = 1000,
    data: DataOpt = None,
    plot: PlotOpt = Path("probe-context.png"),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Loss when the model sees only the last k tokens, and its effective context."""
    from lmrnn.probes import probe_context as run_probe

    with user_errors():
        rows = run_probe(run_dirs, max_context, targets, data, device, plot)
    ks = rows[0]["ks"]
    _probe_output(rows, json_, plot, ("mean NLL (nats) with the last k tokens of context; effective = within 1% of full",
                  ["run", "cell", *[f"k={k}" for k in ks], "full", "effective k"],
                  lambda r: [r["run"], r["cell"], *[f"{v:.3f}" for v in r["losses"]], f"{r['full_context_loss']:.3f}",
                             _distance(r["effective_context"], ks[-1])]))


@probe_app.command("recall")
def probe_recall(
    run_dirs: RunsArg,
    max_fillers: Annotated[int, typer.Option(help="Stories with 0 to this many middle sentences between cue and recall.")] = 8,
    stories: Annotated[int, typer.Option(help="Fresh stories per distance.")] = 200,
    plot: PlotOpt = Path("probe-recall.png"),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """On the stories corpus's grammar, against the words since the hero was named: accuracy at
    naming the hero where the story recalls them, and at their pronoun after sentences without a
    person (distances in words: any tokenizers compare)."""
    from lmrnn.probes import probe_recall as run_probe

    with user_errors():
        rows = run_probe(run_dirs, max_fillers, stories, device, plot)
    titles = {"name": "top-1 accuracy at the recalled hero name (chance 1/24; 1/12 knowing the gender)",
              "gender": "accuracy at the hero's pronoun, he or she, after sentences with no person (chance 1/2)"}
    _probe_output(rows, json_, plot, *[
        (title, ["run", "cell", *[f"{b['distance']:.0f} words" for b in rows[0][task]]],
         lambda r, task=task: [r["run"], r["cell"], *[f"{b['accuracy']:.3f}" for b in r[task]]])
        for task, title in titles.items()])


@tokenizer_app.command("train")
def tokenizer_train(
    data: Annotated[str, typer.Argument(help="Corpus to learn the pieces from (its train split).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the .model file.")],
    vocab_size: Annotated[Optional[int], typer.Option(help="Pieces in the vocabulary (tokenizer.vocab_size; 0 = every word or character for word and char, 1000 for bpe and unigram).")] = None,
    model_type: Annotated[Optional[Literal["bpe", "unigram", "char", "word"]], typer.Option(help="SentencePiece model type.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    text_column: TextColumnOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at --out.")] = False,
) -> None:
    """Train a tokenizer once and reuse it: lmrnn train DATA -s tokenizer.path=FILE."""
    from lmrnn.files import atomic_write
    from lmrnn.data import Corpus
    from lmrnn.tokenizer import train_tokenizer

    with user_errors():
        if out.exists() and not overwrite:
            raise UserError(f"{out} already exists; use --overwrite to replace it")
        cfg = load_config(config, set_ or [], _flags(data__source=data, data__text_column=text_column,
                                                      tokenizer__vocab_size=vocab_size, tokenizer__model_type=model_type))
        tokenizer = train_tokenizer(Corpus(cfg.data).documents("train"), cfg.tokenizer)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, tokenizer.model_bytes)
    stderr.print(f"wrote {out}: {cfg.tokenizer.model_type}, {tokenizer.vocab_size} pieces", highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
