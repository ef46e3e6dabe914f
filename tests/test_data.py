import json
import logging
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrnn import data
from lmrnn.config import DataConfig, TokenizerConfig
from lmrnn.data import IGNORE_INDEX, Corpus, batchify, encode_documents, load_or_train_tokenizer, load_split, windows
from lmrnn.errors import UserError
from lmrnn.tokenizer import train_tokenizer
from tests.conftest import SHARED_CORPORA, write_corpus


def read(cfg: DataConfig) -> dict[str, list[str]]:
    corpus = Corpus(cfg)
    return {split: list(corpus.documents(split)) for split in data.SPLITS}


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


def test_single_file_is_split_contiguously(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    docs = read(DataConfig(source=str(path), valid_fraction=0.1, test_fraction=0.05))
    assert docs["train"] == [f"line {i}" for i in range(85)]
    assert docs["validation"] == [f"line {i}" for i in range(85, 95)]
    assert docs["test"] == [f"line {i}" for i in range(95, 100)]


def test_folder_splits(tmp_path):
    folder = write_corpus(tmp_path / "c", {"train": 40, "valid": 5, "test": 6})
    docs = read(DataConfig(source=str(folder)))
    assert [len(docs[s]) for s in data.SPLITS] == [40, 5, 6]
    (folder / "test.txt").unlink()
    docs = read(DataConfig(source=str(folder), test_fraction=0.1))
    assert [len(docs[s]) for s in data.SPLITS] == [36, 5, 4]  # test carved off the end of train


def test_folder_of_plain_text_files_is_one_corpus(tmp_path):
    (tmp_path / "b.txt").write_text("b1\nb2\n")
    (tmp_path / "a.txt").write_text("".join(f"a{i}\n" for i in range(38)))
    docs = read(DataConfig(source=str(tmp_path)))
    assert docs["train"][0] == "a0" and docs["test"] == ["b1", "b2"]  # files in name order; 5% of 40


def test_data_folder_through_datasets_with_text_column(tmp_path):
    """The same `datasets.load_dataset(name)` path as a hub dataset, from local files offline."""
    for split, n in (("train", 30), ("validation", 3), ("test", 4)):
        rows = [json.dumps({"id": i, "body": f"{split} text {i}"}) for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    docs = read(DataConfig(source=str(tmp_path), text_column="body"))
    assert docs["validation"] == ["validation text 0", "validation text 1", "validation text 2"]
    with pytest.raises(UserError, match="no column 'text'; set data.text_column to one of: id, body"):
        read(DataConfig(source=str(tmp_path)))


def test_hub_name_offline_is_a_clear_error():
    with pytest.raises(UserError, match="could not load dataset 'surely-not-a-dataset:cfg'"):
        read(DataConfig(source="surely-not-a-dataset:cfg"))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n  \n\n", "is empty"),
    (b"\x00\x01binary\x00", "looks like a binary file"),
])
def test_bad_corpus_files(tmp_path, content, message):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read(DataConfig(source=str(path)))


def test_missing_corpus_and_too_few_lines(tmp_path):
    with pytest.raises(UserError, match="no such file or folder: nowhere/corpus.txt"):
        Corpus(DataConfig(source="nowhere/corpus.txt"))
    (tmp_path / "two.txt").write_text("one line\nanother\n")
    with pytest.raises(UserError, match="only 2 lines: too few to split"):
        read(DataConfig(source=str(tmp_path / "two.txt")))


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path, caplog):
    path = tmp_path / "latin1.txt"
    path.write_bytes("".join(f"caf\xe9 {i}\n" for i in range(40)).encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        docs = Corpus(DataConfig(source=str(path))).documents("train")
    assert "not valid UTF-8 (bad byte near offset 3)" in caplog.text
    assert next(iter(docs)) == "caf\ufffd 0"


def test_second_load_reads_the_memory_mapped_cache(corpus_dir, tokenizer, monkeypatch):
    corpus = Corpus(DataConfig(source=str(corpus_dir)))
    first = load_split(corpus, "train", tokenizer)
    monkeypatch.setattr(Corpus, "documents", lambda self, split: pytest.fail("text re-read despite the cache"))
    again = load_split(Corpus(DataConfig(source=str(corpus_dir))), "train", tokenizer)
    assert isinstance(again.ids, np.memmap) and again.ids.dtype == np.uint16
    assert np.array_equal(again.ids, first.ids) and (again.words, again.bytes) == (first.words, first.bytes)


def test_cache_key_follows_the_text_and_the_split_rule(corpus_dir):
    key = Corpus(DataConfig(source=str(corpus_dir))).key()
    assert Corpus(DataConfig(source=str(corpus_dir), test_fraction=0.1)).key() != key
    with open(corpus_dir / "train.txt", "a") as handle:
        handle.write("one more line\n")
    os.utime(corpus_dir / "train.txt", ns=(1, 1))
    assert Corpus(DataConfig(source=str(corpus_dir))).key() != key


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


def test_text_files_are_read_as_datasets_reads_them(tmp_path):
    """Text files are read straight from disk, line by line; the lines are those of datasets'
    own "text" loader: universal newlines, a missing last newline, blank lines, a line
    separator inside a line, undecodable bytes."""
    import datasets

    path = tmp_path / "mixed.txt"
    path.write_bytes(b"one\r\ntwo\rthree\n\nfour\xe2\x80\xa8still four\nbad \xff byte\n  \nlast")
    expected = datasets.load_dataset("text", data_files=str(path), encoding_errors="replace")["train"]["text"]
    assert list(data._read_lines([path])) == list(expected)
    assert len(expected) == 8 and expected[-1] == "last"


def test_streamed_datasets_give_the_same_documents(tmp_path):
    """data.streaming reads a datasets source row by row; the documents are the same. A streamed
    split of unknown length cannot have validation and test carved off it: one clear error
    (once datasets has built the split, its metadata knows the length, and carving works)."""
    for folder, splits in (("full", ("train", "validation", "test")), ("train-only", ("train",))):
        (tmp_path / folder).mkdir()
        for split in splits:
            rows = [json.dumps({"text": f"{split} text {i}"}) for i in range(30 if split == "train" else 3)]
            (tmp_path / folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    full, train_only = str(tmp_path / "full"), str(tmp_path / "train-only")
    assert read(DataConfig(source=full, streaming=True)) == read(DataConfig(source=full))
    with pytest.raises(UserError, match="streamed its train split's size is unknown.*data.streaming=false"):
        read(DataConfig(source=train_only, streaming=True))
    carved = read(DataConfig(source=train_only))
    assert [len(carved[split]) for split in data.SPLITS] == [26, 2, 2]  # 5% of 30 lines, rounded
    assert read(DataConfig(source=train_only, streaming=True)) == carved


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
