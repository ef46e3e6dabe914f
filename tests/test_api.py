import json
import math
import time

import pytest
from typer.testing import CliRunner

import lmrnn
from lmrnn.cli import app


@pytest.fixture(scope="module")
def lm(tiny_run):
    return lmrnn.load(tiny_run, device="cpu")


def invoke(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def test_generate_is_the_cli_text_for_the_same_options_and_seed(lm, tiny_run):
    text = lm.generate("the king", max_new_tokens=30, temperature=0.8, top_p=0.9, seed=3, stop_at_eos=False)
    cli = invoke("generate", tiny_run, "-p", "the king", "-n", "30", "-t", "0.8", "--top-p", "0.9", "--seed", "3",
                 "--no-stop-at-eos", "--device", "cpu")
    assert cli.exit_code == 0 and cli.stdout == "the king" + text + "\n"
    assert lm.generate("the king", max_new_tokens=30, temperature=0.8, top_p=0.9, seed=3, stop_at_eos=False) == text
    assert "".join(lm.stream("the king", max_new_tokens=30, temperature=0.8, top_p=0.9, seed=3, stop_at_eos=False)) == text
    beams = lm.complete("the king", beams=3, num_return=2, max_new_tokens=10)
    cli_beams = json.loads(invoke("generate", tiny_run, "-p", "the king", "--beams", "3", "--num-return", "2", "-n", "10",
                                  "--json", "--device", "cpu").stdout)
    assert [c.text for c in beams.continuations] == [c["text"] for c in cli_beams["continuations"]]


def test_a_stream_left_early_stops_its_generation(lm, monkeypatch):
    handed = []
    complete = lm.complete

    def slow_complete(prompt, on_text, **options):  # 1 ms a piece: the whole 2,000 would take 2 s
        def hand(piece):
            handed.append(piece)
            time.sleep(0.001)
            on_text(piece)
        return complete(prompt, on_text=hand, **options)

    monkeypatch.setattr(lm, "complete", slow_complete)
    stream = lm.stream("the king", max_new_tokens=2000, temperature=1.0, seed=1, stop_at_eos=False)
    next(stream)
    stream.close()  # returns once the worker has stopped
    assert 1 <= len(handed) < 200  # it stopped at the piece after the reader left, not after 2,000


def test_score_and_perplexity_are_the_cli_numbers(lm, tiny_run, tmp_path):
    lines = ["the old fox sang .", "the king ran over the hill ."]
    scores = lm.score(lines)
    cli = json.loads(invoke("score", tiny_run, "--json", "--device", "cpu", input="\n".join(lines) + "\n").stdout)
    assert [(s.tokens, s.logprob) for s in scores] == [(c["tokens"], pytest.approx(c["logprob"], rel=1e-9)) for c in cli]
    (tmp_path / "text.txt").write_text("\n".join(lines * 5) + "\n")
    [evaluated] = json.loads(invoke("eval", tiny_run, "--data", tmp_path / "text.txt", "--batch-size", "1", "--json",
                                    "--device", "cpu").stdout)
    assert lm.perplexity("\n".join(lines * 5)) == pytest.approx(evaluated["ppl"], rel=1e-9)
    assert lm.evaluate().ppl == pytest.approx(json.loads(invoke("eval", tiny_run, "--json", "--device", "cpu").stdout)[0]["ppl"])
    assert "lstm" in repr(lm)


def test_fit_trains_a_run_as_the_cli_does_and_resumes_it(corpus_dir, tmp_path):
    overrides = {"train.max_steps": 6, "train.eval_every": 3, "model.hidden_size": 16, "model.embedding_dim": 16,
                 "tokenizer.vocab_size": 300, "data.cache_dir": str(tmp_path / "cache"), "device": "cpu"}
    summary = lmrnn.fit(corpus_dir, cell="gru", out=tmp_path / "api", overrides=overrides)
    cli = invoke("train", corpus_dir, "--cell", "gru", "--out", tmp_path / "cli",
                 *[arg for key, value in overrides.items() for arg in ("-s", f"{key}={value}")])
    assert cli.exit_code == 0, cli.output
    from_cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["cell"] == "gru" and summary["steps"] == 6 and summary["test_ppl"] == from_cli["test_ppl"]
    longer = lmrnn.fit(out=tmp_path / "api", resume=True, overrides={"train.max_steps": 9})
    assert longer["steps"] == 9 and math.isfinite(longer["test_ppl"])
    with pytest.raises(ValueError, match="give `out`"):
        lmrnn.fit(resume=True)


def test_import_lmrnn_stays_light():
    import subprocess
    import sys

    code = "import sys, lmrnn; assert 'torch' not in sys.modules; lmrnn.load; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
