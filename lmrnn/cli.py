"""The `lmrnn` command line: thin commands over library functions.

Config precedence (lowest first): built-in defaults < --config YAML < -s/--set key.path=value
< dedicated flags (DATA, --cell, --text-column). Heavy modules (torch, datasets) are imported
inside the commands so that `lmrnn --help` stays instant.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Literal, Optional

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

PRECEDENCE = "Precedence: defaults < --config < -s/--set < DATA, --cell, --text-column."
DataArg = Annotated[Optional[str], typer.Argument(
    help="Text file, folder of .txt files (train/valid/test.txt used as splits), folder of "
         "json/csv/parquet files, or Hugging Face dataset name[:config]. Default: the shipped corpus.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML preset, e.g. configs/small.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override one key: -s model.hidden_size=512 (repeatable).")]
TextColumnOpt = Annotated[Optional[str], typer.Option(help="Dataset column holding the text (data.text_column).")]
DeviceOpt = Annotated[Literal["auto", "cpu", "cuda", "mps"], typer.Option(help="Where to run; auto = CUDA, MPS, then CPU.")]


@contextlib.contextmanager
def user_errors():
    """A UserError becomes one red line on stderr and exit code 1; anything else is a bug and raises."""
    try:
        yield
    except UserError as err:
        stderr.print(f"error: {err}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmrnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)


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
    resume: Annotated[bool, typer.Option(help="Continue the interrupted or finished run in --out; only stop limits and device may change.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run already in --out.")] = False,
) -> None:
    from lmrnn import checkpoint
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
    print_table(f"run {run_dir}", ["cell", "params", "steps", "tokens/s", "wall", "best val ppl",
                                   "test ppl", "test word ppl", "test bits/byte"],
                [[summary["cell"], f"{summary['params']:,}", f"{summary['steps']:,}",
                  f"{summary['train_tokens_per_second']:,.0f}", _duration(summary["wall_seconds"]),
                  f"{summary['best_val_ppl']:.2f}", f"{summary['test_ppl']:.2f}",
                  f"{summary['test_word_ppl']:.2f}", f"{summary['test_bits_per_byte']:.3f}"]])
    if summary["stopped_by"] == "interrupt":
        stderr.print(f"interrupted: continue with  lmrnn train --resume --out {run_dir}", soft_wrap=True, highlight=False)
        raise typer.Exit(130)


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `lmrnn train`.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue; empty = start of text.")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate at most.")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy; higher = more random.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens only (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: smallest set with probability >= p (1 = off).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same text.")] = None,
    stop_at_eos: Annotated[bool, typer.Option("--stop-at-eos/--no-stop-at-eos", help="End at the first end-of-sequence; otherwise it starts a new line.")] = True,
    device: DeviceOpt = "auto",
) -> None:
    """Continue a prompt with a trained model; the text goes to stdout."""
    from lmrnn.generate import generate_text

    with user_errors():
        text = generate_text(run_dir, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos, device)
    typer.echo(text)


@app.command("eval")
def eval_(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories, compared side by side.")],
    data: Annotated[Optional[str], typer.Option(help="Evaluate on this corpus instead, with each run's own tokenizer.")] = None,
    split: Annotated[Literal["train", "validation", "test"], typer.Option(help="Which split to score.")] = "test",
    json_: Annotated[bool, typer.Option("--json", help="Print the figures as a JSON list instead of a table.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows scored side by side, each from the zero state (default: the run's train.eval_batch_size; 1 = one stream).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Exact perplexity of whole splits: token and word perplexity, bits per byte."""
    from lmrnn.evaluate import evaluate_run

    with user_errors():
        results = [evaluate_run(run_dir, split, data, device, batch_size) for run_dir in run_dirs]
    if json_:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    print_table(f"{split} split" + (f" of {data}" if data else ""),
                ["run", "cell", "params", "tokens", "ppl", "word ppl", "bits/byte"],
                [[r.run, r.cell, f"{r.params:,}", f"{r.tokens:,}", f"{r.ppl:.2f}", f"{r.word_ppl:.2f}",
                  f"{r.bits_per_byte:.4f}"] for r in results])


@tokenizer_app.command("train")
def tokenizer_train(
    data: Annotated[str, typer.Argument(help="Corpus to learn the pieces from (its train split).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the .model file.")],
    vocab_size: Annotated[Optional[int], typer.Option(help="Pieces in the vocabulary (tokenizer.vocab_size).")] = None,
    model_type: Annotated[Optional[Literal["bpe", "unigram", "char", "word"]], typer.Option(help="SentencePiece model type.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    text_column: TextColumnOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at --out.")] = False,
) -> None:
    """Train a tokenizer once and reuse it: lmrnn train DATA -s tokenizer.path=FILE."""
    from lmrnn.checkpoint import atomic_write
    from lmrnn.data import Corpus
    from lmrnn.tokenizer import train_tokenizer

    with user_errors():
        if out.exists() and not overwrite:
            raise UserError(f"{out} already exists; use --overwrite to replace it")
        cfg = load_config(config, set_ or [], _flags(data__source=data, data__text_column=text_column,
                                                      tokenizer__vocab_size=vocab_size, tokenizer__model_type=model_type))
        tokenizer = train_tokenizer(Corpus(cfg.data).documents()["train"], cfg.tokenizer)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, tokenizer.model_bytes)
    stderr.print(f"wrote {out}: {cfg.tokenizer.model_type}, {tokenizer.vocab_size} pieces", highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
