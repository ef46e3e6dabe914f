"""Text corpora -> documents -> cached token ids -> BPTT windows.

A document is one row of the dataset: one line of a text file. A split's token stream starts
with an end-of-sequence id and has one after every document, so every token of the split,
including each document's end, is predicted exactly once, from the start-of-text context first.

Text files are read line by line from disk; json/csv/parquet folders and hub datasets through
Hugging Face `datasets` (streamed with data.streaming). Nothing here holds a whole corpus in
memory: documents are read in passes, encoded shard by shard into an id file, and the id file
is memory-mapped.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from lmrnn.config import DataConfig, TokenizerConfig
from lmrnn.errors import UserError
from lmrnn.files import atomic_write, write_atomically
from lmrnn.tokenizer import UNK_ID, Tokenizer, train_tokenizer, warn_if_capped

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
WHOLE = "whole"  # every document of a corpus that has no splits of its own (eval --data FILE)
IGNORE_INDEX = -100  # F.cross_entropy skips targets with this value (eval padding)
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "stories"
_SPLIT_FILES = {"train": ("train.txt",), "validation": ("valid.txt", "validation.txt"), "test": ("test.txt",)}
_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")
# documents encoded at once (SentencePiece's threads share them) and written to the cache
SHARD_CHARS = 1 << 20
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?")  # name, owner/name, with :config


@dataclass
class Split:
    """One split as a token stream plus the counts that make perplexities comparable."""
    ids: np.ndarray  # (tokens + 1,) starts with eos; memory-mapped when read from the cache
    words: int  # whitespace words + one end-of-line per document (the PTB convention)
    bytes: int  # UTF-8 bytes + one newline per document
    characters: int  # Unicode characters + one newline per document

    @property
    def tokens(self) -> int:
        return len(self.ids) - 1  # predicted positions


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


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("LMRNN_CACHE") or Path.home() / ".cache" / "lmrnn")


def load_or_train_tokenizer(corpus: Corpus, cfg: TokenizerConfig) -> Tokenizer:
    """`cfg.path` when given; else a tokenizer trained on the train split, cached per corpus and
    tokenizer settings (SentencePiece training is deterministic on the same lines)."""
    if cfg.path:
        return Tokenizer.load(cfg.path)
    settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()
    path = cache_root(corpus.cfg) / corpus.key() / f"tokenizer-{hashlib.blake2b(settings, digest_size=8).hexdigest()}.model"
    try:
        tokenizer = Tokenizer.load(path)
        warn_if_capped(tokenizer, cfg)
    except UserError:  # not cached yet, or a damaged entry: train
        tokenizer = train_tokenizer(corpus.documents("train"), cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, tokenizer.model_bytes)
    return tokenizer


def load_split(corpus: Corpus, split: str, tokenizer: Tokenizer, shard_chars: int = SHARD_CHARS) -> Split:
    """A split's token stream, memory-mapped from the cache; encoded into it first, shard by
    shard, when this corpus and tokenizer have not made it before. Tokens outside the
    vocabulary (<unk>: a tokenizer without byte fallback) are counted on stderr, never silently."""
    stem = cache_root(corpus.cfg) / corpus.key() / f"{tokenizer.fingerprint}-{split}"
    meta_path, ids_path = stem.with_suffix(".json"), stem.with_suffix(".bin")
    cached = _read_cache(meta_path, ids_path) or _encode_split(corpus, split, tokenizer, shard_chars, meta_path, ids_path)
    unknown = int(np.count_nonzero(cached.ids == UNK_ID))
    if unknown:
        log.warning("the %s split has %s tokens (%.2f%%) outside the tokenizer's vocabulary, read as <unk>%s",
                    split, f"{unknown:,}", 100 * unknown / max(1, cached.tokens),
                    "" if split == "train" else " (symbols the train split lacks, or beyond tokenizer.vocab_size)")
    return cached


def _encode_split(corpus: Corpus, split: str, tokenizer: Tokenizer, shard_chars: int, meta_path: Path,
                  ids_path: Path) -> Split:
    ids_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"tokens": 0, "words": 0, "bytes": 0, "characters": 0, "dtype": id_dtype(tokenizer.vocab_size).name}

    def encode_into(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            np.array([tokenizer.eos_id], dtype=meta["dtype"]).tofile(out)
            for shard in encoded_shards(corpus.documents(split), tokenizer, shard_chars):
                shard.ids[1:].tofile(out)  # each shard's leading eos is the previous shard's last id
                meta["tokens"] += shard.tokens
                meta["words"] += shard.words
                meta["bytes"] += shard.bytes
                meta["characters"] += shard.characters

    write_atomically(ids_path, encode_into)
    atomic_write(meta_path, json.dumps(meta))  # last: a cache entry without its meta is rebuilt
    return _read_cache(meta_path, ids_path)


def _read_cache(meta_path: Path, ids_path: Path) -> Split | None:
    try:
        meta = json.loads(meta_path.read_text())
        ids = np.memmap(ids_path, dtype=meta["dtype"], mode="r")
        if len(ids) == meta["tokens"] + 1:
            return Split(ids, meta["words"], meta["bytes"], meta["characters"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached, or a damaged entry: rebuilt by the caller
    return None


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32)


def encoded_shards(documents: Iterable[str], tokenizer: Tokenizer, shard_chars: int = SHARD_CHARS) -> Iterator[Split]:
    """The stream [eos] doc1 [eos] doc2 [eos] ... shard by shard, each shard a Split of its own
    (starting with the eos before its first document). SentencePiece's threads encode each
    shard in parallel; memory holds one shard, never the corpus."""
    dtype, eos = id_dtype(tokenizer.vocab_size), tokenizer.eos_id
    for shard in _shards(documents, shard_chars):
        encoded = tokenizer.encode_batch(shard)
        ids = np.empty(1 + sum(map(len, encoded)) + len(encoded), dtype=dtype)
        ids[0], at = eos, 1
        for piece in encoded:
            ids[at:at + len(piece)] = piece
            at += len(piece) + 1
            ids[at - 1] = eos
        yield Split(ids, words=sum(len(doc.split()) for doc in shard) + len(shard),
                    bytes=sum(len(doc.encode("utf-8")) for doc in shard) + len(shard),
                    characters=sum(map(len, shard)) + len(shard))


def _shards(documents: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    """Consecutive runs of documents, each closed once it holds `max_chars` characters."""
    shard, chars = [], 0
    for doc in documents:
        shard.append(doc)
        chars += len(doc) + 1
        if chars >= max_chars:
            yield shard
            shard, chars = [], 0
    if shard:
        yield shard


def encode_documents(documents: Iterable[str], tokenizer: Tokenizer) -> Split:
    """[eos] doc1 [eos] doc2 [eos] ... as one array in memory, with word and byte counts."""
    shards = list(encoded_shards(documents, tokenizer, shard_chars=1 << 62))
    if not shards:
        return Split(np.array([tokenizer.eos_id], dtype=id_dtype(tokenizer.vocab_size)), 0, 0, 0)
    return shards[0]


def batchify(ids: np.ndarray, batch_size: int, pad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cut a stream into `batch_size` contiguous rows of (input, target) pairs, batch-first.

        stream   e  a  b  c  e  d  f  g  h  e  i  j      (e = end of sequence)
        x = stream[:-1]  ->  e a b c e d f g h e i      N = 11 pairs
        y = stream[1:]   ->  a b c e d f g h e i j
        B = 3, train (pad=False): L = N // B = 3, the last N mod B pairs dropped
            x  [[e a b]        y  [[a b c]
                [c e d]            [e d f]
                [f g h]]           [g h e]]
        eval (pad=True): L = ceil(N / B) = 4, every pair kept; the tail of the last row is
        padded (x with eos, y with IGNORE_INDEX), so summed NLL covers exactly the N targets.

    Row b continues row b's text from window to window, which is what lets the hidden state be
    carried across windows. Returns x, y: (B, L) arrays; without padding, views of `ids`, so a
    memory-mapped stream stays on disk and `windows` reads one window at a time.
    """
    ids = np.asarray(ids)
    n = len(ids) - 1
    if pad:
        length = -(-n // batch_size)
        x = np.full(length * batch_size, ids[0], dtype=np.int32)
        y = np.full(length * batch_size, IGNORE_INDEX, dtype=np.int32)
        x[:n], y[:n] = ids[:-1], ids[1:]
    else:
        length = n // batch_size
        x, y = ids[:length * batch_size], ids[1:length * batch_size + 1]
    return x.reshape(batch_size, length), y.reshape(batch_size, length)


def windows(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, bptt: int):
    """Yield (x, y) windows of `bptt` columns, (B, T) int64 tensors; y is x shifted by one
    everywhere, across window boundaries too. The last window may be shorter."""
    for offset in range(0, x.shape[1], bptt):
        yield as_long(x[:, offset:offset + bptt]), as_long(y[:, offset:offset + bptt])


def as_long(ids: np.ndarray | torch.Tensor) -> torch.Tensor:
    return ids.long() if isinstance(ids, torch.Tensor) else torch.from_numpy(ids.astype(np.int64))

