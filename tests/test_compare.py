import dataclasses
import json
import os
import signal

import pytest
from safetensors.torch import load_file

from lmrnn import checkpoint
from lmrnn.compare import REPORT, RESULTS, aggregate, compare, matched_hidden_size, parse_cells, parse_seeds, plan_sizes
from lmrnn.comparison_report import CURVES, report_markdown
from lmrnn.config_parser import load_config
from lmrnn.console import ComparisonProgress
from lmrnn.errors import UserError
from lmrnn.models import RNNLM, count_parameters
from tests.conftest import REPO, write_corpus

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_cfg(corpus, steps=12):
    return load_config(REPO / "configs" / "tiny.yaml", [f"data.source={corpus}", "device=cpu", "train.epochs=0",
                                                       f"train.max_steps={steps}", "train.eval_every=4"])


def test_match_params_within_two_percent_and_reference_keeps_its_size():
    cfg = load_config(overrides=["model.hidden_size=256", "model.embedding_dim=256"])
    cfg.model.vocab_size = 4000
    reference, hidden, params = plan_sizes(cfg, ["rnn", "lstm", "gru"], "params")
    assert reference == "lstm" and hidden["lstm"] == 256
    assert hidden["rnn"] > hidden["gru"] > hidden["lstm"]  # fewer gates, more units
    for cell in ("rnn", "gru"):
        assert abs(params[cell] / params["lstm"] - 1) < 0.02
        built = RNNLM(dataclasses.replace(cfg.model, cell=cell, hidden_size=hidden[cell]))
        assert built.num_parameters() == params[cell]
        # no neighbouring size is closer
        for other in (hidden[cell] - 1, hidden[cell] + 1):
            gap = abs(count_parameters(dataclasses.replace(cfg.model, cell=cell, hidden_size=other)) - params["lstm"])
            assert gap >= abs(params[cell] - params["lstm"])
    _, same, _ = plan_sizes(cfg, ["rnn", "gru"], "hidden")
    assert same == {"rnn": 256, "gru": 256}
    assert plan_sizes(cfg, ["gru", "rnn"], "params")[0] == "gru"  # no LSTM: the first cell


def test_matching_across_the_untied_projection_jump():
    """Tied weights add an H x E projection only when H != E: the scan must not stop before H = E."""
    cfg = load_config(overrides=["model.hidden_size=32", "model.embedding_dim=32"])
    cfg.model.vocab_size = 300
    target = count_parameters(cfg.model)
    assert matched_hidden_size(cfg, "lstm", target) == 32


def test_unmatchable_sizes_and_bad_lists_are_user_errors():
    # one unit of a plain RNN here is worth 22% of the LSTM's whole count
    cfg = load_config(overrides=["model.hidden_size=1", "model.embedding_dim=256", "model.num_layers=1"])
    cfg.model.vocab_size = 4
    with pytest.raises(UserError, match="within 2%"):
        plan_sizes(cfg, ["rnn", "lstm"], "params")
    for text in ("lstm,tree", "", "lstm,lstm"):
        with pytest.raises(UserError, match="--cells"):
            parse_cells(text)
    for text in ("1,x", "", "2,2"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(text)
    assert parse_cells(" rnn, gru ") == ["rnn", "gru"] and parse_seeds("3,1") == [3, 1]


def test_compare_tunes_each_cell_on_validation_then_trains_every_seed(tmp_path):
    from lmrnn.tuning import parse_knobs

    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "cmp"
    cfg = tiny_cfg(corpus, steps=9)
    knobs = parse_knobs(["train.lr=1e-3:1e-1"], cfg)
    # 6 trials: all train to 1/3 of the budget, the best 2 go on to all of it (a pause, then a resume)
    stopped = compare(cfg, ["rnn", "gru"], [1, 2], "hidden", out, knobs=knobs, trials=6,
                      progress=InterruptOnce(20, at_run=1, after_updates=2))
    assert stopped["interrupted"] and not (out / RESULTS).exists()
    results = compare(tiny_cfg(corpus, steps=9), ["rnn", "gru"], [1, 2], "hidden", out, knobs=knobs, trials=6,
                      progress=ComparisonProgress(20, enabled=False))
    for cell in ("rnn", "gru"):
        found = results["tuning"][cell]
        full = [t for t in found["trials"] if t["budget"] == 1.0]
        assert len(found["trials"]) == 6 and len(full) == 2
        first_rung = sorted(t["val_ppl_by_rung"][0] for t in found["trials"])
        assert sorted(t["val_ppl_by_rung"][0] for t in full) == first_rung[:2]  # promoted on validation
        chosen = min(full, key=lambda t: t["val_ppl"])
        assert found["best"] == {"train.lr": chosen["train.lr"]} and chosen["val_ppl"] == chosen["val_ppl_by_rung"][1]
        assert found["best_trial"] == chosen["trial"]
        for trial in found["trials"]:
            run = out / "tuning" / cell / f"trial{trial['trial']}"
            tested = [r for r in checkpoint.read_metrics(run) if r.get("split") == "test"]
            assert bool(tested) == (trial["budget"] == 1.0)  # a paused trial is never scored on test
            trial_cfg = checkpoint.read_config(run)
            assert (trial_cfg.seed, trial_cfg.train.lr, trial_cfg.train.max_steps) == (3, trial["train.lr"], 9)
            assert checkpoint.read_summary(run)["steps"] == 9 * trial["budget"]
        for seed in (1, 2):  # every seed trains the chosen setting, afresh
            assert checkpoint.read_config(out / f"{cell}-seed{seed}").train.lr == chosen["train.lr"]
    saved = json.loads((out / RESULTS).read_text())
    assert saved["tuning"]["gru"]["best"] == results["tuning"]["gru"]["best"]
    assert saved["tuning"]["gru"]["best_trial"] == results["tuning"]["gru"]["best_trial"]  # report.md names its val ppl
    assert f"{chosen['val_ppl']:.2f} at 1" in (out / "report.md").read_text()
    assert saved["tuning_plan"]["rungs"] == [[1 / 3, 6], [1.0, 2]] and saved["tuning_plan"]["seed"] == 3
    report = (out / REPORT).read_text()
    assert "## Tuning" in report and "train.lr in [0.001, 0.1] (log scale)" in report and "## Differences" in report
    assert (out / "tuning.png").read_bytes().startswith(PNG)
    with pytest.raises(UserError, match="different settings.*tune"):
        compare(tiny_cfg(corpus, steps=9), ["rnn", "gru"], [1, 2], "hidden", out, trials=3,
                knobs=parse_knobs(["train.lr=1e-3:1e-2"], cfg), progress=ComparisonProgress(12, enabled=False))
    # a search that now chooses another setting (its records edited here) keeps no run made for the old one
    search_path = out / "tuning" / "gru" / "search.json"
    records = json.loads(search_path.read_text())
    rival = next(r for r in records if len(r["val_ppl"]) == 2 and r["trial"] != chosen["trial"])
    rival["val_ppl"][-1] = 0.5
    search_path.write_text(json.dumps(records))
    with pytest.raises(UserError, match=r"gru-seed1 trained a setting the search no longer chooses \(train.lr"):
        compare(tiny_cfg(corpus, steps=9), ["rnn", "gru"], [1, 2], "hidden", out, knobs=knobs, trials=6,
                progress=ComparisonProgress(20, enabled=False))
    assert checkpoint.read_config(out / "gru-seed1").train.lr == chosen["train.lr"]  # left as it was


def test_aggregate_mean_and_sample_sd():
    runs = [{key: value for key in ("best_val_ppl", "test_ppl", "test_word_ppl", "test_bits_per_byte",
                                    "train_tokens_per_second", "wall_seconds")} for value in (2.0, 4.0, 9.0)]
    stats = aggregate(runs)["test_ppl"]
    assert stats["mean"] == 5.0 and stats["sd"] == pytest.approx(((9 + 1 + 16) / 2) ** 0.5)
    assert (stats["min"], stats["max"], stats["n"]) == (2.0, 9.0, 3)
    assert stats["ci95"] == pytest.approx(4.303 * stats["sd"] / 3 ** 0.5, rel=1e-3)
    assert aggregate(runs[:1])["test_ppl"]["sd"] == 0.0 and aggregate(runs[:1])["test_ppl"]["ci95"] is None


class InterruptOnce(ComparisonProgress):
    """Sends SIGINT to this process during the second run, as a user's Ctrl-C would."""

    def __init__(self, total, at_run=1, after_updates=5):
        super().__init__(total, enabled=False)
        self.at_run, self.after, self.calls = at_run, after_updates, 0

    def update(self, fraction, status=None):
        if self.done == self.at_run:
            self.calls += 1
            if self.calls == self.after:
                os.kill(os.getpid(), signal.SIGINT)


def test_compare_writes_everything_and_resumes_an_interrupted_comparison(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "cmp"
    cells, seeds = ["rnn", "gru"], [1, 2]
    first = compare(tiny_cfg(corpus), cells, seeds, "params", out, progress=InterruptOnce(4))
    assert first["interrupted"] and [r["cell"] for r in first["runs"]] == ["rnn", "gru"]
    assert first["runs"][1]["steps"] < 12 and not (out / RESULTS).exists()
    finished = out / "rnn-seed1" / checkpoint.WEIGHTS
    stamp = finished.stat().st_mtime_ns

    results = compare(tiny_cfg(corpus), cells, seeds, "params", out, progress=ComparisonProgress(4, enabled=False))
    assert finished.stat().st_mtime_ns == stamp  # the finished run was not retrained
    assert [(r["cell"], r["seed"], r["steps"]) for r in results["runs"]] == [
        ("rnn", 1, 12), ("gru", 1, 12), ("rnn", 2, 12), ("gru", 2, 12)]
    # the resumed run ends exactly where an uninterrupted one does
    clean = compare(tiny_cfg(corpus), cells, [1], "params", tmp_path / "clean", progress=ComparisonProgress(2, enabled=False))
    assert clean["hidden_sizes"]["gru"] == results["hidden_sizes"]["gru"]
    resumed, straight = (load_file(d / "gru-seed1" / checkpoint.WEIGHTS) for d in (out, tmp_path / "clean"))
    assert all((resumed[k] == straight[k]).all() for k in straight)

    shared = (out / checkpoint.TOKENIZER).read_bytes()
    assert all((out / f"{c}-seed{s}" / checkpoint.TOKENIZER).read_bytes() == shared for c in cells for s in seeds)
    saved = json.loads((out / RESULTS).read_text())
    assert saved["per_cell"]["gru"]["test_ppl"]["n"] == 2 and len(saved["runs"]) == 4
    assert abs(saved["params"]["rnn"] / saved["params"]["gru"] - 1) < 0.02
    report = (out / REPORT).read_text()
    assert "| rnn |" in report and "| gru |" in report and "± " in report and f"]({CURVES})" in report
    assert (out / CURVES).read_bytes().startswith(PNG)
    assert "weight_drop" not in report  # a plain comparison names no regulariser
    saved["config"].update({"model.weight_drop": 0.3, "model.layer_norm": True})
    assert "dropout 0.0, weight_drop 0.3, layer_norm, tokenizer" in report_markdown(saved)


def test_compare_refuses_a_folder_with_other_contents(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "cmp"
    compare(tiny_cfg(corpus, steps=4), ["rnn"], [1], "hidden", out, progress=ComparisonProgress(1, enabled=False))
    with pytest.raises(UserError, match="different settings.*cells"):
        compare(tiny_cfg(corpus, steps=4), ["gru"], [1], "hidden", out, progress=ComparisonProgress(1, enabled=False))
    with pytest.raises(UserError, match="different settings.*train.max_steps 4 -> 5"):
        compare(tiny_cfg(corpus, steps=5), ["rnn"], [1], "hidden", out, progress=ComparisonProgress(1, enabled=False))
    # a comparison saved before a config key existed resumes when the key keeps its old behaviour
    request = json.loads((out / "request.json").read_text())
    del request["config"]["model.embedding_scale"]
    (out / "request.json").write_text(json.dumps(request))
    compare(tiny_cfg(corpus, steps=4), ["rnn"], [1], "hidden", out, progress=ComparisonProgress(1, enabled=False))
    request["config"]["model.init_range"] = 0.1  # one that ran otherwise is still told apart
    (out / "request.json").write_text(json.dumps(request))
    with pytest.raises(UserError, match="different settings.*model.init_range 0.1 -> 0.3"):
        compare(tiny_cfg(corpus, steps=4), ["rnn"], [1], "hidden", out, progress=ComparisonProgress(1, enabled=False))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        compare(tiny_cfg(corpus, steps=4), ["rnn"], [1], "hidden", other, progress=ComparisonProgress(1, enabled=False))
    assert (other / "notes.txt").read_text() == "mine"


def test_kneser_ney_baselines_join_the_comparison(tmp_path):
    """ngram2,ngram3 beside a neural cell: counted (no hidden size, no matching, no curve), each
    order its own row, and the n-gram figures are those of a plain `lmrnn train --cell ngram`."""
    from lmrnn.train import train

    corpus = write_corpus(tmp_path / "corpus")
    cfg = tiny_cfg(corpus, steps=4)
    cfg.tokenizer.model_type, cfg.tokenizer.vocab_size = "word", 0
    results = compare(cfg, parse_cells("ngram2,ngram3,gru"), [1], "params", tmp_path / "cmp",
                      progress=ComparisonProgress(3, enabled=False))
    assert results["hidden_sizes"]["ngram2"] == "order 2" and results["hidden_sizes"]["gru"] == cfg.model.hidden_size
    assert results["reference"] == "gru"
    two, three = (results["per_cell"][c]["test_ppl"]["mean"] for c in ("ngram2", "ngram3"))
    assert two != three and results["params"]["ngram3"] > results["params"]["ngram2"] > 0
    single = tiny_cfg(corpus)
    single.tokenizer.model_type, single.tokenizer.vocab_size = "word", 0
    single.model.cell, single.model.order = "ngram", 3
    assert train(single, tmp_path / "alone")["test_ppl"] == pytest.approx(three)
    assert "order 3" in (tmp_path / "cmp" / REPORT).read_text()
    with pytest.raises(UserError, match="ngramN"):
        parse_cells("ngram11,lstm")
