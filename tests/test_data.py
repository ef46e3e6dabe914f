import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrnn import data
from lmrnn.config import DataConfig, TokenizerConfig
from lmrnn.corpus import Corpus
from lmrnn.data import IGNORE_INDEX, batchify, encode_documents, load_or_train_tokenizer, load_split, windows
from lmrnn.tokenizer import train_tokenizer
from tests.conftest import SHARED_CORPORA


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["a bb ccc the king", "ë hello world ."] * 20, TokenizerConfig(vocab_size=300))


def test_stream_layout_and_word_byte_counts(tokenizer):
    split = encode_documents(["a bb", "ccc ë"], tokenizer)
    eos = tokenizer.eos_id
    expected = [eos, *tokenizer.encode("a bb"), eos, *tokenizer.encode("ccc ë"), eos]
    assert split.ids.tolist() == expected
    assert split.tokens == len(expected) - 1  # every token after the first eos is predicted
    assert split.words == 2 + 2 + 2  # whitespace words + one end-of-line per document
    assert split.bytes == 4 + 6 + 2  # "ccc ë" is 6 UTF-8 bytes; + one newline per document
    assert split.characters == 4 + 5 + 2  # Unicode characters; + one newline per document


def test_batchify_matches_the_drawn_example():
    stream = np.arange(12)  # 12 ids -> 11 (input, target) pairs
    x, y = batchify(stream, 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    x, y = batchify(stream, 3, pad=True)
    assert x.shape == y.shape == (3, 4)
    assert y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, IGNORE_INDEX]]
    assert int((y != IGNORE_INDEX).sum()) == 11  # every target exactly once


def test_targets_are_inputs_shifted_across_window_boundaries():
    x, y = batchify(np.arange(1000) % 251, batch_size=4)
    parts = list(windows(x, y, bptt=7))
    assert [w[0].shape[1] for w in parts][-1] == x.shape[1] % 7 or x.shape[1] % 7 == 0
    xs = torch.cat([w[0] for w in parts], dim=1)
    ys = torch.cat([w[1] for w in parts], dim=1)
    assert xs.dtype == ys.dtype == torch.int64
    assert xs.tolist() == x.tolist() and ys.tolist() == y.tolist()
    assert torch.equal(ys[:, :-1], xs[:, 1:])  # y[t] == x[t+1], window boundaries included


def test_second_load_reads_the_memory_mapped_cache(corpus_dir, tokenizer, monkeypatch):
    corpus = Corpus(DataConfig(source=str(corpus_dir)))
    first = load_split(corpus, "train", tokenizer)
    monkeypatch.setattr(Corpus, "documents", lambda self, split: pytest.fail("text re-read despite the cache"))
    again = load_split(Corpus(DataConfig(source=str(corpus_dir))), "train", tokenizer)
    assert isinstance(again.ids, np.memmap) and again.ids.dtype == np.uint16
    assert np.array_equal(again.ids, first.ids) and (again.words, again.bytes) == (first.words, first.bytes)


def test_trained_tokenizer_is_cached_per_corpus_and_settings(corpus_dir, monkeypatch):
    corpus = Corpus(DataConfig(source=str(corpus_dir)))
    first = load_or_train_tokenizer(corpus, TokenizerConfig(vocab_size=300))

    def trained(*args):
        raise RuntimeError("trained")

    monkeypatch.setattr(data, "train_tokenizer", trained)
    assert load_or_train_tokenizer(corpus, TokenizerConfig(vocab_size=300)).fingerprint == first.fingerprint
    with pytest.raises(RuntimeError, match="trained"):
        load_or_train_tokenizer(corpus, TokenizerConfig(vocab_size=290))  # other settings: trains


@pytest.mark.corpus
@pytest.mark.skipif(not (SHARED_CORPORA / "ptb" / "test.txt").is_file(), reason="needs ../shared/corpora/ptb")
def test_word_and_byte_counts_match_the_published_ptb_figures(tokenizer):
    """PTB test: 78,669 words + 3,761 lines = 82,430, the count published PTB perplexities use;
    bytes = the file's size, since each line's newline counts once."""
    split = encode_documents(Corpus(DataConfig(source=str(SHARED_CORPORA / "ptb"))).documents("test"), tokenizer)
    assert split.words == 82_430
    assert split.bytes == (SHARED_CORPORA / "ptb" / "test.txt").stat().st_size == 449_945


@given(length=st.integers(2, 400), batch_size=st.integers(1, 12), bptt=st.integers(1, 50), pad=st.booleans())
@settings(max_examples=200, deadline=None)
def test_windowing_covers_every_target_once_in_order(length, batch_size, bptt, pad):
    """Position p of the stream is target number p-1: walking the windows row by row meets
    every target exactly once, in stream order (train drops only the last N mod B pairs)."""
    stream = np.arange(length)  # distinct ids, so positions can be read back from values
    if pad is False and (length - 1) // batch_size == 0:
        return  # fewer pairs than rows: training refuses this before batching
    x, y = batchify(stream, batch_size, pad=pad)
    rows = [[] for _ in range(batch_size)]
    for xw, yw in windows(x, y, bptt):
        assert xw.shape == yw.shape and 1 <= xw.shape[1] <= bptt
        for b in range(batch_size):
            rows[b] += [(int(i), int(t)) for i, t in zip(xw[b], yw[b]) if t != IGNORE_INDEX]
    pairs = [pair for row in rows for pair in row]
    kept = length - 1 if pad else (length - 1) // batch_size * batch_size
    assert [t for _, t in pairs] == list(range(1, kept + 1))  # each target once, in order
    assert all(t == i + 1 for i, t in pairs)  # every input is the token just before its target


def test_sharded_cache_has_the_ids_of_the_unsharded_path(corpus_dir, tokenizer):
    """Encoding in shards of a few documents and appending each to the id file gives exactly
    the stream and counts of encoding the split at once, and the file is memory-mapped."""
    corpus = Corpus(DataConfig(source=str(corpus_dir)))
    whole = encode_documents(list(corpus.documents("train")), tokenizer)
    sharded = load_split(corpus, "train", tokenizer, shard_chars=100)  # about 2 documents per shard
    assert len(list(data.encoded_shards(corpus.documents("train"), tokenizer, 100))) > 50
    assert isinstance(sharded.ids, np.memmap) and sharded.ids.dtype == whole.ids.dtype == np.uint16
    assert np.array_equal(sharded.ids, whole.ids)
    assert (sharded.words, sharded.bytes, sharded.tokens) == (whole.words, whole.bytes, whole.tokens)
    empty = encode_documents([], tokenizer)
    assert empty.ids.tolist() == [tokenizer.eos_id] and empty.tokens == 0


def test_tokens_outside_the_vocabulary_are_counted_on_stderr(tmp_path, caplog):
    """A word model capped below the text's words (no byte fallback) reads the rest as <unk>,
    and says what share of each split that is; the full vocabulary says nothing."""
    folder = tmp_path / "words"
    folder.mkdir()
    (folder / "train.txt").write_text("a a a a b b b c c d\n" * 5)  # d: 5 of 55 train tokens
    (folder / "valid.txt").write_text("a b\n")
    (folder / "test.txt").write_text("a e\n")  # e: never seen
    corpus = Corpus(DataConfig(source=str(folder), cache_dir=str(tmp_path / "cache")))
    capped = load_or_train_tokenizer(corpus, TokenizerConfig(model_type="word", vocab_size=5))  # a b c <unk> eos
    with caplog.at_level(logging.WARNING, logger="lmrnn.data"):
        load_split(corpus, "train", capped)
    assert "train split has 5 tokens (9.09%) outside the tokenizer's vocabulary" in caplog.text
    every = load_or_train_tokenizer(corpus, TokenizerConfig(model_type="word"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmrnn.data"):
        load_split(corpus, "train", every)
        assert not caplog.text
        load_split(corpus, "test", every)
    assert "test split has 1 tokens (33.33%)" in caplog.text
