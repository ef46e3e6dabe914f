"""Text in and out of the commands: prompts and text files, stdout, durations."""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path
from typing import Iterator

from lmrnn.console import stderr
from lmrnn.errors import UserError


def read_text(path: Path) -> str:
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


def stdin_is_piped() -> bool:
    """True when stdin is a pipe or a redirected file (not a terminal, not /dev/null)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):  # replaced by a test runner
        return not sys.stdin.isatty()
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """--prompt, else --prompt-file ('-' = stdin), else piped stdin, else the empty prompt (the
    start of text); one final newline is dropped."""
    if prompt_file is not None:
        return read_text(prompt_file).removesuffix("\n")
    if prompt is None:
        return sys.stdin.read().removesuffix("\n") if stdin_is_piped() else ""
    return prompt


def keyboard_prompts() -> Iterator[str]:
    """generate --interactive: one prompt per line typed, until Ctrl-D."""
    stderr.print("a prompt per line; an empty line starts from the start of text; Ctrl-C stops a text, Ctrl-D quits",
                 highlight=False)
    while True:
        stderr.print("> ", end="", highlight=False)
        line = sys.stdin.readline()
        if not line:
            return
        yield line.removesuffix("\n")


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
