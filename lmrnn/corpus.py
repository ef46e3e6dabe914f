"""Where text comes from: a corpus's documents, split into train, validation and test.

A document is one row of the dataset: one line of a text file. Text files are read line by line
from disk; json/csv/parquet folders and hub datasets through Hugging Face `datasets` (streamed
with data.streaming). Documents are read in passes, never all held in memory. A corpus without
validation and test of its own has them carved off the end of its train split.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import itertools
import logging
import re
from pathlib import Path
from typing import Callable, Iterator

from lmrnn.config import DataConfig
from lmrnn.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
WHOLE = "whole"  # every document of a corpus that has no splits of its own (eval --data FILE)
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "stories"
_SPLIT_FILES = {"train": ("train.txt",), "validation": ("valid.txt", "validation.txt"), "test": ("test.txt",)}
_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?")  # name, owner/name, with :config


class Documents:
    """One split's documents, read afresh from disk (or the hub) each time it is iterated, so a
    corpus never has to fit in memory. `rows` starts a new pass over the split's source; rows
    [start, stop) of it belong to this split (validation and test carved off the end of train)."""

    def __init__(self, rows: Callable[[], Iterator[str]], start: int = 0, stop: int | None = None):
        self._rows, self.start, self.stop = rows, start, stop

    def __iter__(self) -> Iterator[str]:
        return itertools.islice(self._rows(), self.start, self.stop)


class Corpus:
    """Where a corpus lives, how it splits, and a key that changes when its text does."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        source = cfg.source or str(DEFAULT_CORPUS)
        self.path = Path(source).expanduser()
        if self.path.is_file() or self.path.is_dir():
            self.kind = "files"
            self.files = self._local_files()
        elif not _HUB_NAME.fullmatch(source) or source.endswith((".txt",) + _DATA_SUFFIXES):
            raise UserError(f"no such file or folder: {source}")
        else:
            self.kind = "hub"
            self.files = {}
        self.name = self.path.stem if self.kind == "files" else source.replace("/", "_").replace(":", "_")
        self._sources: dict[str, Callable[[], Iterator[str]]] | None = None
        self._splits: dict[str, Documents] | None = None

    def _local_files(self) -> dict[str, list[Path]]:
        """Split name -> files; only "train" when the data has no splits of its own."""
        if self.path.is_file():
            return {"train": [self.path]}
        split_files = {name: [self.path / f for f in names if (self.path / f).is_file()][:1]
                       for name, names in _SPLIT_FILES.items()}
        if split_files["train"]:
            return {name: files for name, files in split_files.items() if files}
        texts = sorted(p for p in self.path.rglob("*.txt") if p.is_file())
        if texts:
            return {"train": texts}
        if any(p.suffix in _DATA_SUFFIXES for p in self.path.iterdir()):
            self.kind = "folder"  # json/csv/parquet files: datasets finds the splits itself
            return {}
        raise UserError(f"{self.path} holds no .txt files and no json/csv/parquet data files")

    def key(self) -> str:
        """Identifies the text and how it is split, without reading it: the split rule, the text
        column and each file's path, size and mtime (a hub dataset: its name and config)."""
        parts = [self.kind, self.cfg.source if self.kind == "hub" else str(self.path.resolve()),
                 self.cfg.text_column, repr(self.cfg.valid_fraction), repr(self.cfg.test_fraction)]
        parts += [f"{name}:{path}" for name, paths in self.files.items() for path in paths]
        if self.kind == "folder":
            watched = sorted(p for p in self.path.rglob("*") if p.is_file())
        else:
            watched = [path for paths in self.files.values() for path in paths]
        for path in watched:
            stat = path.stat()
            parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        return self.name + "-" + hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()

    def documents(self, split: str) -> Documents:
        """The documents of one split, validation and test carved off the end of train,
        contiguously, when the data has none (counting train's rows once to do so); or, for
        WHOLE, every document of a corpus with no validation or test of its own."""
        if self._sources is None:
            self._sources, self._count = self._open()
            if "train" not in self._sources or not any(doc.strip() for doc in self._sources["train"]()):
                raise UserError(f"corpus {self.cfg.source or self.path} is empty: no text in its train split")
        if split == WHOLE:
            if self.has_own_splits():
                raise UserError(f"{self.cfg.source or self.path} has splits of its own: score one of them")
            return Documents(self._sources["train"])
        if self._splits is None:
            self._splits = _carve_missing_splits(self._sources, self._count, self.cfg)
        return self._splits[split]

    def has_own_splits(self) -> bool:
        """Whether the data names a validation or test split (files, or dataset splits) rather
        than having them carved off its text."""
        if self.kind == "files":
            return set(self.files) != {"train"}
        if self._sources is None:
            self.documents("train")
        return set(self._sources) != {"train"}

    def _open(self) -> tuple[dict[str, Callable[[], Iterator[str]]], Callable[[str], int]]:
        """Per split, a function that starts a pass over its documents; and one that counts them."""
        if self.kind == "files":
            # plain text is read line by line straight from disk; empty files are left out
            files = {name: [p for p in paths if _check_text_file(p)] for name, paths in self.files.items()}
            sources = {name: functools.partial(_read_lines, paths) for name, paths in files.items() if paths}
            return sources, lambda name: sum(1 for _ in sources[name]())
        import datasets  # heavy import, only when text must really be read
        import huggingface_hub

        datasets.logging.set_verbosity_error()
        huggingface_hub.utils.logging.set_verbosity_error()  # network failures: our one error line
        datasets.disable_progress_bars()
        source = str(self.path) if self.kind == "folder" else self.cfg.source
        name, _, config = source.partition(":") if self.kind == "hub" else (source, "", "")
        try:
            loaded = datasets.load_dataset(name, config or None, streaming=self.cfg.streaming)
        except Exception as err:  # network, missing dataset or config: all the user's to fix
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"could not load dataset '{source}' with datasets: {first}") from None
        splits = {_split_name(split): dataset for split, dataset in loaded.items()}
        sources = {split: functools.partial(self._texts, dataset, split) for split, dataset in splits.items()}
        nonempty = {split: rows for split, rows in sources.items() if next(rows(), None) is not None}
        return nonempty, functools.partial(_count_rows, splits, source)

    def _texts(self, dataset, split: str) -> Iterator[str]:
        column = self.cfg.text_column
        for batch in dataset.iter(batch_size=1000):  # Arrow (or the network) -> one batch in memory
            if column not in batch:
                raise UserError(f"split '{split}' has no column '{column}'; set data.text_column to one "
                                f"of: {', '.join(batch)}")
            yield from (text or "" for text in batch[column])


def _read_lines(paths: list[Path]) -> Iterator[str]:
    """The lines of text files, exactly as datasets' "text" loader splits them: universal
    newlines, the line break dropped, undecodable bytes as U+FFFD."""
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                yield line.rstrip("\n")


def _count_rows(splits: dict, source: str, split: str) -> int:
    """Rows of a datasets split: its length, or, streamed, the count in the dataset's metadata."""
    dataset = splits[split]
    try:
        return len(dataset)
    except TypeError:  # a streamed split has no length
        info = getattr(dataset.info, "splits", None) or {}
        known = next((s.num_examples for name, s in info.items() if _split_name(name) == split), None)
        if not known:
            raise UserError(f"'{source}' has no validation or test split, and streamed its train split's size is "
                            f"unknown, so none can be carved off; set data.streaming=false") from None
        return known


def _split_name(name: str) -> str:
    return {"valid": "validation", "val": "validation", "dev": "validation"}.get(name, name)


def _carve_missing_splits(sources: dict[str, Callable[[], Iterator[str]]], count: Callable[[str], int],
                          cfg: DataConfig) -> dict[str, Documents]:
    splits = {name: Documents(rows) for name, rows in sources.items()}
    missing = [name for name in ("validation", "test") if name not in splits]
    if not missing:
        return {name: splits[name] for name in SPLITS}
    n = count("train")
    fractions = {"validation": cfg.valid_fraction, "test": cfg.test_fraction}
    sizes = {name: max(1, round(n * fractions[name])) for name in missing}
    if n - sum(sizes.values()) < 1:
        raise UserError(f"the corpus has only {n} lines: too few to split off "
                        f"{' and '.join(missing)}; give more text or separate split files")
    end = n
    for name in reversed(missing):  # test is the last slice, validation the one before it
        splits[name] = Documents(sources["train"], end - sizes[name], end)
        end -= sizes[name]
    splits["train"] = Documents(sources["train"], 0, end)
    return {name: splits[name] for name in SPLITS}


def _check_text_file(path: Path) -> bool:
    """Refuse binary files; warn about invalid UTF-8 (decoded with U+FFFD replacements).
    Returns whether the file has any bytes at all."""
    with open(path, "rb") as handle:
        head = handle.read(8192)
        if not head:
            return False
        if b"\x00" in head:
            raise UserError(f"{path} looks like a binary file, not text")
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        offset, chunk = 0, head
        while chunk:
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                log.warning("%s is not valid UTF-8 (bad byte near offset %d): undecodable bytes are "
                            "replaced with U+FFFD", path, offset + err.start)
                return True
            offset += len(chunk)
            chunk = handle.read(1 << 20)
    return True
