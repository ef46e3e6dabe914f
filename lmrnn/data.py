"""Text corpora -> documents (via Hugging Face `datasets`) -> cached token ids -> BPTT windows.

A document is one row of the dataset: one line of a text file. A split's token stream starts
with an end-of-sequence id and has one after every document, so every token of the split,
including each document's end, is predicted exactly once, from the start-of-text context first.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmrnn.config import DataConfig, TokenizerConfig
from lmrnn.errors import UserError
from lmrnn.tokenizer import Tokenizer, train_tokenizer, warn_if_capped

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
IGNORE_INDEX = -100  # F.cross_entropy skips targets with this value (eval padding)
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "stories"
_SPLIT_FILES = {"train": ("train.txt",), "validation": ("valid.txt", "validation.txt"), "test": ("test.txt",)}
_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow")
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?")  # name, owner/name, with :config


@dataclass
class Split:
    """One split as a token stream plus the counts that make perplexities comparable."""
    ids: np.ndarray  # (tokens + 1,) starts with eos; memory-mapped when read from the cache
    words: int  # whitespace words + one end-of-line per document (the PTB convention)
    bytes: int  # UTF-8 bytes + one newline per document

    @property
    def tokens(self) -> int:
        return len(self.ids) - 1  # predicted positions


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
        self._documents: dict[str, list[str]] | None = None

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

    def documents(self) -> dict[str, list[str]]:
        """The documents of each split (loaded once), carving validation/test off the end of
        train, contiguously, when the data has none."""
        if self._documents is None:
            splits = self._load()
            if not any(doc.strip() for doc in splits.get("train", [])):
                raise UserError(f"corpus {self.cfg.source or self.path} is empty: no text in its train split")
            self._documents = _carve_missing_splits(splits, self.cfg)
        return self._documents

    def _load(self) -> dict[str, list[str]]:
        import datasets  # heavy import, only when text must really be read
        import huggingface_hub

        datasets.logging.set_verbosity_error()
        huggingface_hub.utils.logging.set_verbosity_error()  # network failures: our one error line
        datasets.disable_progress_bars()
        if self.kind == "files":
            # datasets cannot build a split from empty files: leave them out (train stays, empty)
            data_files = {name: [str(p) for p in paths if _check_text_file(p)] for name, paths in self.files.items()}
            data_files = {name: files for name, files in data_files.items() if files}
            if "train" not in data_files:
                return {"train": []}
            loaded = datasets.load_dataset("text", data_files=data_files, encoding_errors="replace")
        else:
            source = str(self.path) if self.kind == "folder" else self.cfg.source
            name, _, config = source.partition(":") if self.kind == "hub" else (source, "", "")
            try:
                loaded = datasets.load_dataset(name, config or None)
            except Exception as err:  # network, missing dataset or config: all the user's to fix
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"could not load dataset '{source}' with datasets: {first}") from None
        return {_split_name(name): self._texts(ds, name) for name, ds in loaded.items()}

    def _texts(self, dataset, split: str) -> list[str]:
        column = self.cfg.text_column
        if column not in dataset.column_names:
            raise UserError(f"split '{split}' has no column '{column}'; set data.text_column to one "
                            f"of: {', '.join(dataset.column_names)}")
        return [text or "" for text in dataset[column]]


def _split_name(name: str) -> str:
    return {"valid": "validation", "val": "validation", "dev": "validation"}.get(name, name)


def _carve_missing_splits(splits: dict[str, list[str]], cfg: DataConfig) -> dict[str, list[str]]:
    train = splits["train"]
    missing = [name for name in ("validation", "test") if not splits.get(name)]
    fractions = {"validation": cfg.valid_fraction, "test": cfg.test_fraction}
    sizes = {name: max(1, round(len(train) * fractions[name])) for name in missing}
    if len(train) - sum(sizes.values()) < 1:
        raise UserError(f"the corpus has only {len(train)} lines: too few to split off "
                        f"{' and '.join(missing)}; give more text or separate split files")
    end = len(train)
    for name in reversed(missing):  # test is the last slice, validation the one before it
        splits[name] = train[end - sizes[name]:end]
        end -= sizes[name]
    splits["train"] = train[:end]
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
        tokenizer = train_tokenizer(corpus.documents()["train"], cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(tokenizer.model_bytes)
        os.replace(tmp, path)
    return tokenizer


def load_split(corpus: Corpus, split: str, tokenizer: Tokenizer) -> Split:
    """A split's token stream, from the cache when this corpus and tokenizer made it before."""
    folder = cache_root(corpus.cfg) / corpus.key()
    stem = folder / f"{tokenizer.fingerprint}-{split}"
    meta_path, ids_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    if meta_path.is_file() and ids_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            ids = np.load(ids_path, mmap_mode="r")
            if len(ids) == meta["tokens"] + 1:
                return Split(ids, meta["words"], meta["bytes"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    result = encode_documents(corpus.documents()[split], tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = ids_path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, result.ids)
    os.replace(tmp, ids_path)
    meta_path.write_text(json.dumps({"tokens": result.tokens, "words": result.words, "bytes": result.bytes}))
    return result


def encode_documents(documents: list[str], tokenizer: Tokenizer, chunk: int = 20_000) -> Split:
    """[eos] doc1 [eos] doc2 [eos] ... as one flat array, with word and byte counts."""
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max else np.int32
    eos = tokenizer.eos_id
    pieces = [np.array([eos], dtype=dtype)]
    for start in range(0, len(documents), chunk):
        for ids in tokenizer.encode_batch(documents[start:start + chunk]):
            pieces.append(np.array(ids + [eos], dtype=dtype))
    words = sum(len(doc.split()) for doc in documents) + len(documents)
    n_bytes = sum(len(doc.encode("utf-8")) for doc in documents) + len(documents)
    return Split(np.concatenate(pieces), words, n_bytes)


def batchify(ids: np.ndarray, batch_size: int, pad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
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
    carried across windows. Returns x, y: (B, L) int64.
    """
    stream = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    x, y = stream[:-1], stream[1:]
    n = len(x)
    if pad:
        length = -(-n // batch_size)
        extra = length * batch_size - n
        x = torch.cat([x, x.new_full((extra,), int(stream[0]))])
        y = torch.cat([y, y.new_full((extra,), IGNORE_INDEX)])
    else:
        length = n // batch_size
        x, y = x[:length * batch_size], y[:length * batch_size]
    return x.view(batch_size, length), y.view(batch_size, length)


def windows(x: torch.Tensor, y: torch.Tensor, bptt: int, start: int = 0):
    """Yield (x, y) windows of `bptt` columns, (B, T) each, from window index `start`; y is x
    shifted by one everywhere, across window boundaries too. The last window may be shorter."""
    for offset in range(start * bptt, x.size(1), bptt):
        yield x[:, offset:offset + bptt], y[:, offset:offset + bptt]


def num_windows(x: torch.Tensor, bptt: int) -> int:
    return -(-x.size(1) // bptt)
