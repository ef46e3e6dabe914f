"""The argument and option types the commands share, and the config flags they set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

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


def flags(**values) -> dict:
    """Dedicated CLI flags as config keys: data__source=... -> data.source (None: not given)."""
    return {key.replace("__", "."): value for key, value in values.items() if value is not None}
