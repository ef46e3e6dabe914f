import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lmrnn import checkpoint
from lmrnn.cli import app
from lmrnn.inspector import correlations, inspect_run, read_text, text_features, tracking_units
from tests.conftest import write_corpus

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


def invoke(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def test_text_features_by_hand():
    pieces = ["He", " said", ' "', "hi", " (", "x", ")", '"', "\n", "a"]
    features = text_features(pieces)
    assert features["quotes"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]  # the state before each token's first character
    assert features["brackets"].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert features["line"].tolist() == [0, 2, 7, 9, 11, 13, 14, 15, 16, 0]
    assert features["word start"].tolist() == [1, 1, 1, 0, 1, 0, 0, 0, 0, 1]


def test_correlations_and_the_unit_that_tracks_a_feature():
    rng = np.random.default_rng(0)
    feature = rng.normal(size=200)
    states = rng.normal(size=(200, 6))
    states[:, 4] = 3 * feature + 1  # tracks it exactly
    states[:, 2] = 0.5  # constant: r 0, not NaN
    r = correlations(states, feature)
    assert r[4] == pytest.approx(1.0) and r[2] == 0.0
    assert r[0] == pytest.approx(np.corrcoef(states[:, 0], feature)[0, 1])
    assert tracking_units(states, {"it": feature, "flat": np.zeros(200)}) == [{"feature": "it", "unit": 4, "r": pytest.approx(1.0)}]


def test_surprisal_is_the_models_own_on_the_whole_stream(tiny_run):
    """The windowed surprisal equals -log softmax of one forward pass over the stream, and the
    pieces join into the text."""
    model, tokenizer, _ = checkpoint.load_run(tiny_run, torch.device("cpu"))
    text = "the old king ran over the hill .\nthe fox sang .\n" * 20
    reading = read_text(model, tokenizer, text)
    ids = [tokenizer.eos_id]
    for i, line in enumerate(text.removesuffix("\n").split("\n")):
        ids += ([tokenizer.eos_id] if i else []) + tokenizer.encode(line)
    with torch.inference_mode():
        logprobs = model(torch.tensor([ids]))[0][0].log_softmax(-1)
    expected = -logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    np.testing.assert_allclose(reading.surprisal, expected.numpy(), atol=1e-4)
    assert "".join(reading.pieces) == text.removesuffix("\n") and reading.states.shape == (len(ids) - 1, 32)
    best = logprobs[5].exp().topk(5)
    assert [p for _, p in reading.candidates[5]] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_inspect_writes_one_self_contained_page_and_refuses_what_it_cannot_show(tiny_run, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text('the king said "the fox ran (over the hill)" .\n' * 10)
    page = tmp_path / "page.html"
    result = invoke("inspect", tiny_run, "--text", text, "--out", page)
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "<script src" not in html and "http" not in html.split("<script>")[1]  # nothing fetched
    data = json.loads(re.search(r"const DATA = (.*);\n", html)[1].replace("<\\/", "</"))
    assert data["tokens"] == len(data["pieces"]) == len(data["surprisal"]) and data["hidden_size"] == 32
    assert {found["feature"] for found in data["tracking"]} == {"quotes", "brackets", "line", "word start"}
    for args, message in [((), "is empty"), (("--max-tokens", "20"), "over --max-tokens 20"), (("--layer", "3"), "layers 0 to 0")]:
        if not args:
            text.write_text("  \n")
        bad = invoke("inspect", tiny_run, "--text", text, "--out", tmp_path / "bad.html", *args)
        assert bad.exit_code == 1 and message in bad.stderr, bad.output
        text.write_text("the king said hello .\n" * 5)
    corpus = write_corpus(tmp_path / "corpus")
    ngram = tmp_path / "ngram"
    assert invoke("train", corpus, "--cell", "ngram", "-s", "model.order=2", "-s", "tokenizer.vocab_size=300",
                  "-s", f"data.cache_dir={tmp_path / 'cache'}", "--out", ngram).exit_code == 0
    refused = invoke("inspect", ngram, "--text", text, "--out", tmp_path / "bad.html")
    assert refused.exit_code == 1 and "inspect shows recurrent states" in refused.stderr


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs a headless Chromium (apt install chromium)")
def test_the_page_renders_in_a_browser_and_the_unit_picker_recolours_it(tiny_run, tmp_path):
    text = 'the king said "the fox ran (over the hill)" .\n' * 10
    page = tmp_path / "page.html"
    inspect_run(tiny_run, text, page, device="cpu")
    shown = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                            "--dump-dom", f"file://{page}#selftest"], capture_output=True, text=True, timeout=120)
    assert 'data-selftest="pass"' in shown.stdout, (shown.stdout[-500:], shown.stderr[-2000:])
    assert "Uncaught" not in shown.stderr and "CONSOLE" not in shown.stderr.replace("CONSOLE(0)", "")
