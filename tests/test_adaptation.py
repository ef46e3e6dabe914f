import json
import math

import numpy as np
import pytest
import torch

from lmrnn import checkpoint
from lmrnn.adaptation import Stream, adapt_run, cache_logprobs, dynamic_nll, mix, read_stream
from lmrnn.corpus import Corpus
from lmrnn.data import load_split
from lmrnn.evaluate import evaluate_run


def test_cache_probabilities_by_hand():
    torch.manual_seed(0)
    N, D, W, theta = 40, 5, 7, 0.8
    stream = Stream(torch.randn(N, D), torch.randint(0, 4, (N,)), torch.zeros(N, dtype=torch.float64))
    got = cache_logprobs(stream, W, theta, block=9)  # blocks smaller than the window: bands cross them
    assert math.isnan(got[0])  # nothing cached yet
    for t in range(1, N):
        cached = range(max(0, t - W), t)
        weights = torch.tensor([theta * float(stream.features[t] @ stream.features[i]) for i in cached]).double().softmax(0)
        p = sum(w for w, i in zip(weights.tolist(), cached) if stream.targets[i] == stream.targets[t])
        assert got[t].item() == (pytest.approx(math.log(p), abs=1e-6) if p > 0 else -math.inf)
    # proper online: a later position's feature or target changes nothing before it
    later = Stream(stream.features.clone(), stream.targets.clone(), stream.logprobs)
    later.features[30] += 1.0
    later.targets[30] = 3 - later.targets[30]
    assert torch.equal(cache_logprobs(later, W, theta, block=9)[:30].nan_to_num(), got[:30].nan_to_num())


def test_mixing_weight_zero_is_the_static_model():
    logprobs = torch.log(torch.tensor([0.5, 0.25, 0.1], dtype=torch.float64))
    cache = torch.tensor([math.nan, -math.inf, math.log(0.5)], dtype=torch.float64)
    assert mix(logprobs, cache, 0.0) == float(-logprobs.sum())
    # weight 0.2: p_model at t = 0 (empty cache), 0.8 p_model where the target is not cached
    assert mix(logprobs, cache, 0.2) == pytest.approx(-(math.log(0.5) + math.log(0.8 * 0.25) + math.log(0.8 * 0.1 + 0.2 * 0.5)))


@pytest.fixture(scope="module")
def tiny(tiny_run):
    model, tokenizer, cfg = checkpoint.load_run(tiny_run, torch.device("cpu"))
    ids = load_split(Corpus(cfg.data), "validation", tokenizer).ids
    return model, ids, cfg.train.bptt


def test_static_stream_is_eval_with_one_row_and_dynamic_lr_zero_changes_nothing(tiny_run, tiny):
    model, ids, bptt = tiny
    static = -read_stream(model, ids, bptt).logprobs.sum().item()
    # the same figure as eval's (which lays the logits out differently: float32 rounding apart)
    assert static == pytest.approx(evaluate_run(tiny_run, "validation", device="cpu", batch_size=1).nll, rel=1e-7)
    assert dynamic_nll(model, ids, bptt, lr=0.0, decay=0.0) == pytest.approx(static, rel=1e-12)


def test_dynamic_evaluation_learns_a_repeated_text(tiny):
    """Text seen a moment ago is predicted better once the weights adapt to it."""
    model, ids, bptt = tiny
    segment = np.asarray(ids[:24])
    repeated = np.concatenate([segment] + [segment[1:]] * 20)
    static = dynamic_nll(model, repeated, bptt, 0.0, 0.0)
    assert dynamic_nll(model, repeated, bptt, 0.1, 0.0) < 0.95 * static
    before = [p.detach().clone() for p in model.parameters()]
    dynamic_nll(model, repeated, bptt, 0.1, 0.01)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the run's model is untouched


def test_adapt_run_and_the_eval_command(tiny_run):
    from typer.testing import CliRunner

    from lmrnn.cli import app

    info, results = adapt_run(tiny_run, cache=True, dynamic=True, window=50, device="cpu")
    static, cache, dynamic = results
    assert [r.method for r in results] == ["static", "cache", "dynamic"]
    assert static.test_nll == pytest.approx(evaluate_run(tiny_run, "test", device="cpu", batch_size=1).nll, rel=1e-7)
    # picked on validation: no setting in the grid does better there than the one chosen, nor than static with lambda/lr 0
    assert cache.validation_nll <= static.validation_nll + 1e-9 or cache.settings["lambda"] > 0
    assert set(cache.settings) == {"window", "theta", "lambda"} and set(dynamic.settings) == {"lr", "decay"}
    result = CliRunner().invoke(app, ["eval", str(tiny_run), "--cache", "--dynamic", "--cache-window", "50", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["method"] for r in rows] == ["static", "cache", "dynamic"] and rows[0]["gain"] == 0.0
    bad = CliRunner().invoke(app, ["eval", str(tiny_run), "--cache", "--batch-size", "4"])
    assert bad.exit_code == 1 and "drop --split, --batch-size and --burn-in" in bad.stderr


def test_cache_on_a_file_scores_it_whole_with_settings_from_the_runs_validation(tiny_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("".join(f"the crow sang over the hill {i} .\n" for i in range(60)))
    info, results = adapt_run(tiny_run, cache=True, dynamic=False, window=50, device="cpu", data=str(other))
    static, _ = results
    assert info["test_split"] == "whole" and info["splits"]["test"].words == 60 * 9
    own, own_results = adapt_run(tiny_run, cache=True, dynamic=False, window=50, device="cpu")
    assert static.validation_nll == pytest.approx(own_results[0].validation_nll, rel=1e-9)  # the run's validation
    assert static.test_nll == pytest.approx(evaluate_run(tiny_run, data=str(other), device="cpu", batch_size=1).nll, rel=1e-7)
