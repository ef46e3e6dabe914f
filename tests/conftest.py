"""Shared fixtures: an isolated cache, offline `datasets`, tiny corpora and configs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPORA = REPO.parent / "shared" / "corpora"
TINY = ["--config", str(REPO / "configs" / "tiny.yaml")]


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Token caches and datasets' cache live in one temp folder per test session; no network."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("LMRNN_CACHE", str(root / "lmrnn-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "hf-datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def fresh_logging():
    """A CLI test binds lmrnn's log handler to CliRunner's temporary stderr; drop it afterwards."""
    yield
    import logging

    logging.getLogger("lmrnn").handlers.clear()


def write_corpus(folder: Path, lines_per_split: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A small made-up corpus with train/valid/test.txt in `folder`."""
    import random

    rng = random.Random(seed)
    words = "the a king queen fox crow ran sang over under hill river with sword lamp old new".split()
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (lines_per_split or {"train": 300, "valid": 30, "test": 30}).items():
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + " ." for _ in range(count)]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


def requires_cuda():
    import torch

    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny trained run (the tiny preset on a made-up corpus), shared by the tests that read runs."""
    from lmrnn.config_parser import load_config
    from lmrnn.console import TrainingProgress
    from lmrnn.train import train

    root = tmp_path_factory.mktemp("tiny-run")
    corpus = write_corpus(root / "corpus")
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.source={corpus}", f"data.cache_dir={root / 'cache'}",
                                                       "device=cpu", "train.max_steps=40"])
    train(cfg, root / "run", progress=TrainingProgress(enabled=False))
    return root / "run"
