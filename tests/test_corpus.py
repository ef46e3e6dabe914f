import json
import logging
import os

import pytest

from lmrnn import corpus as corpus_module
from lmrnn.config import DataConfig
from lmrnn.corpus import SPLITS, Corpus
from lmrnn.errors import UserError
from tests.conftest import write_corpus


def read(cfg: DataConfig) -> dict[str, list[str]]:
    corpus = Corpus(cfg)
    return {split: list(corpus.documents(split)) for split in SPLITS}


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
    assert [len(docs[s]) for s in SPLITS] == [40, 5, 6]
    (folder / "test.txt").unlink()
    docs = read(DataConfig(source=str(folder), test_fraction=0.1))
    assert [len(docs[s]) for s in SPLITS] == [36, 5, 4]  # test carved off the end of train


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


def test_cache_key_follows_the_text_and_the_split_rule(corpus_dir):
    key = Corpus(DataConfig(source=str(corpus_dir))).key()
    assert Corpus(DataConfig(source=str(corpus_dir), test_fraction=0.1)).key() != key
    with open(corpus_dir / "train.txt", "a") as handle:
        handle.write("one more line\n")
    os.utime(corpus_dir / "train.txt", ns=(1, 1))
    assert Corpus(DataConfig(source=str(corpus_dir))).key() != key


def test_text_files_are_read_as_datasets_reads_them(tmp_path):
    """Text files are read straight from disk, line by line; the lines are those of datasets'
    own "text" loader: universal newlines, a missing last newline, blank lines, a line
    separator inside a line, undecodable bytes."""
    import datasets

    path = tmp_path / "mixed.txt"
    path.write_bytes(b"one\r\ntwo\rthree\n\nfour\xe2\x80\xa8still four\nbad \xff byte\n  \nlast")
    expected = datasets.load_dataset("text", data_files=str(path), encoding_errors="replace")["train"]["text"]
    assert list(corpus_module._read_lines([path])) == list(expected)
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
    assert [len(carved[split]) for split in SPLITS] == [26, 2, 2]  # 5% of 30 lines, rounded
    assert read(DataConfig(source=train_only, streaming=True)) == carved
