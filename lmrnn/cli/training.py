"""lmrnn train, lmrnn compare, lmrnn tokenizer train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from lmrnn.cli import app, rank, tokenizer_app, user_errors
from lmrnn.cli.options import PRECEDENCE, ConfigOpt, DataArg, SetOpt, TextColumnOpt, flags
from lmrnn.cli.text_io import duration
from lmrnn.config import Cell
from lmrnn.config_parser import load_config
from lmrnn.console import print_table, stderr
from lmrnn.errors import UserError


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
        given = flags(data__source=data, model__cell=cell, data__text_column=text_column)
        if resume:
            if config is not None:
                raise UserError("--resume reads the run's own config.yaml; drop --config")
            run_dir = out or default_run_dir(load_config(None, set_ or [], given))
            cfg = checkpoint.resume_config(run_dir, set_ or [], given)
        else:
            cfg = load_config(config, set_ or [], given)
            run_dir = out or default_run_dir(cfg)
        summary = run_training(cfg, run_dir, resume=resume, overwrite=overwrite)
    if rank():
        raise typer.Exit(STOP_EXIT_CODES.get(summary["stopped_by"], 0))
    print_table(f"run {run_dir}", ["cell", "params", "steps", "tokens/s", "wall", "best val ppl",
                                   "test ppl", "test word ppl", "test bits/byte"],
                [[summary["cell"], f"{summary['params']:,}", f"{summary['steps']:,}",
                  f"{summary['train_tokens_per_second']:,.0f}", duration(summary["wall_seconds"]),
                  *(("–" if summary[key] is None else format(summary[key], spec)) for key, spec in (
                      ("best_val_ppl", ".2f"), ("test_ppl", ".2f"), ("test_word_ppl", ".2f"),
                      ("test_bits_per_byte", ".3f")))]])  # none before the first validation
    if summary["stopped_by"] in STOP_EXIT_CODES:
        stderr.print(f"stopped ({summary['stopped_by']}): continue with  lmrnn train --resume --out {run_dir}",
                     soft_wrap=True, highlight=False)
        raise typer.Exit(STOP_EXIT_CODES[summary["stopped_by"]])


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
    from lmrnn.corpus import Corpus
    from lmrnn.tuning import parse_knobs

    with user_errors():
        for name, value in (("--budget-minutes", budget_minutes), ("--max-steps", max_steps)):
            if value is not None and value <= 0:
                raise UserError(f"{name} must be > 0, got {value}")
        limits = {}
        if budget_minutes is not None or max_steps is not None:
            limits = {"train.epochs": 0, "train.max_minutes": budget_minutes or 0.0, "train.max_steps": max_steps or 0}
        cfg = load_config(config, set_ or [], {**flags(data__source=data, data__text_column=text_column), **limits})
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
    from lmrnn.corpus import Corpus
    from lmrnn.tokenizer import train_tokenizer

    with user_errors():
        if out.exists() and not overwrite:
            raise UserError(f"{out} already exists; use --overwrite to replace it")
        cfg = load_config(config, set_ or [], flags(data__source=data, data__text_column=text_column,
                                                      tokenizer__vocab_size=vocab_size, tokenizer__model_type=model_type))
        tokenizer = train_tokenizer(Corpus(cfg.data).documents("train"), cfg.tokenizer)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, tokenizer.model_bytes)
    stderr.print(f"wrote {out}: {cfg.tokenizer.model_type}, {tokenizer.vocab_size} pieces", highlight=False, soft_wrap=True)


@app.command()
def report(
    comparison: Annotated[Path, typer.Argument(help="A folder written by `lmrnn compare`.")],
    probe: Annotated[bool, typer.Option("--probe", help="First measure the probes of its runs that have not been measured.")] = False,
    device: Annotated[str, typer.Option(help="Where the probes run; auto = CUDA, MPS, then CPU.")] = "auto",
) -> None:
    """One self-contained HTML page of a comparison: its tables with intervals, learning curves,
    tuning plot, and the gradient, context, gate and recall probes of its runs where measured."""
    from lmrnn.comparison_page import comparison_page

    with user_errors():
        page = comparison_page(comparison, probe, device)
    stderr.print(f"report: {page}", highlight=False, soft_wrap=True)
