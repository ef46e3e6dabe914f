"""The `lmrnn` command line: thin commands over library functions.

    __init__   the app, its entry point run(), user_errors()
    options    the argument and option types the commands share; config flags
    training   train, compare, report, tokenizer train
    use        generate, score, eval, inspect, export, serve
    probe      probe gradients, context, recall, gates
    text_io    prompts and text files in, text and tables out

Config precedence (lowest first): built-in defaults < --config YAML < -s/--set key.path=value
< dedicated flags (DATA, --cell, --text-column). Heavy modules (torch, datasets) are imported
inside the commands so that `lmrnn --help` stays instant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Annotated

import typer

from lmrnn import __version__
from lmrnn.console import setup_logging, stderr
from lmrnn.errors import UserError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Recurrent language models (RNN, LSTM, GRU): train, generate, evaluate.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Standalone SentencePiece tokenizers.")
app.add_typer(tokenizer_app, name="tokenizer")
probe_app = typer.Typer(no_args_is_help=True, help="Measure vanishing gradients, context use and recall of trained runs.")
app.add_typer(probe_app, name="probe")


def rank() -> int:
    """The torchrun rank of this process (0 without torchrun): only rank 0 prints results. Read
    from torchrun's environment, as runtime.start_ranks reads it, because the logging set-up and
    the error messages need it before (or without) torch being imported."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def user_errors():
    """A UserError becomes one red line on stderr and exit code 1; a second Ctrl-C (abort at once)
    exits 130 without a traceback; anything else is a bug and raises."""
    try:
        yield
    except UserError as err:
        where = f"rank {rank()}: " if rank() else ""
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
    setup_logging(verbose, quiet=rank() > 0)


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


# the commands register themselves on `app` as their modules are imported (after `app`: they import it)
from lmrnn.cli import training, use, probe  # noqa: E402

COMMAND_MODULES = (training, use, probe)
