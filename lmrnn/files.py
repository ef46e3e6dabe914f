"""Writing a file so that a crash, a full disk or a power cut leaves either the old file or the
new one, complete, with the permissions any ordinary file of the user would get.

The recipe (as in SQLite's and ext4's documentation of rename-based updates):

    write the new content under a temporary name in the same folder, and close it
    fsync the temporary file      its data reaches the disk before its name does
    os.replace it over the target  atomic: readers see the old file or the new one
    fsync the folder               the rename itself survives a power cut

Without the first fsync, ext4 (data=ordered, delalloc), XFS and btrfs may persist the rename
before the data, and the file comes back empty or short after a power cut. Some writers
(SentencePiece's and safetensors' Rust code, tempfile) create files with mode 0600; every file
written here gets 0666 less the umask instead, so a colleague or a service under another user
can read a run they can list.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

from lmrnn.errors import UserError


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: hidden, and unique per process
    and machine (the first rank of each machine of a distributed run fills a cache that may be
    on storage the machines share)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{socket.gethostname()}")


def ordinary_file_mode() -> int:
    """0666 less the process umask: the mode open() gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)`, then make tmp durable and rename it over `path`. A failed write (full disk,
    unwritable folder) removes tmp and becomes a UserError; `path` keeps its previous content."""
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.chmod(tmp, ordinary_file_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
        if os.name == "posix":  # a folder cannot be opened for fsync on Windows
            fsync_path(path.parent)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0][:200]
        raise UserError(f"cannot write {path} ({reason}); the previous {path.name} is intact") from None


def atomic_write(path: Path, data: bytes | str) -> None:
    write_atomically(path, lambda tmp: tmp.write_bytes(data.encode() if isinstance(data, str) else data))
