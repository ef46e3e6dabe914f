"""A corpus's documents (lmrnn.corpus) -> cached token ids -> BPTT windows.

A split's token stream starts with an end-of-sequence id and has one after every document, so
every token of the split, including each document's end, is predicted exactly once, from the
start-of-text context first. Nothing here holds a whole corpus in memory: documents are encoded
shard by shard into an id file, and the id file is memory-mapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from lmrnn.config import DataConfig, TokenizerConfig
from lmrnn.corpus import Corpus
from lmrnn.errors import UserError
from lmrnn.files import atomic_write, write_atomically
from lmrnn.tokenizer import UNK_ID, Tokenizer, train_tokenizer, warn_if_capped

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # F.cross_entropy skips targets with this value (eval padding)
# documents encoded at once (SentencePiece's threads share them) and written to the cache
SHARD_CHARS = 1 << 20


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

