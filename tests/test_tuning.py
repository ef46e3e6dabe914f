import json
import math

import pytest

from lmrnn import checkpoint
from lmrnn.config_parser import load_config
from lmrnn.errors import Diverged, UserError
from lmrnn.tuning import SEARCH, Knob, candidates, parse_knobs, rungs, search


def test_rungs_of_successive_halving():
    # two trials reach the full budget, where the better is chosen
    assert rungs(9) == [(1 / 9, 9), (1 / 3, 3), (1.0, 2)]
    assert rungs(27)[0] == (1 / 27, 27) and [n for _, n in rungs(27)] == [27, 9, 3, 2]
    assert rungs(8) == [(1 / 3, 8), (1.0, 2)]
    assert rungs(3) == [(1 / 3, 3), (1.0, 2)]
    assert rungs(2) == [(1.0, 2)] and rungs(1) == [(1.0, 1)]  # too few to halve: a plain search


def test_knobs_from_default_and_given_ranges():
    cfg = load_config()
    lr, clip, dropout, hidden_layers = parse_knobs(
        ["train.lr", "train.clip_grad_norm=0.1:10", "model.dropout", "model.num_layers=1:3"], cfg)
    assert (lr.low, lr.high, lr.log) == (3e-4, 1e-1, True)  # adamw's range, a factor 333: log scale
    assert (clip.low, clip.high, clip.log) == (0.1, 10.0, True)
    assert (dropout.low, dropout.high, dropout.log) == (0.0, 0.6, False)  # from 0: linear
    assert hidden_layers.integer and hidden_layers.value(0.99) == 3 and hidden_layers.value(0.0) == 1
    assert lr.value(0.0) == 3e-4 and lr.value(0.5) == pytest.approx(math.sqrt(3e-4 * 1e-1), rel=1e-3)
    sgd = load_config(overrides=["train.optimizer=sgd", "train.lr=20"])
    assert parse_knobs(["train.lr"], sgd)[0].high == 60.0  # SGD's rates are another scale


@pytest.mark.parametrize("spec, message", [
    ("train.lrr", "unknown config key 'train.lrr'; did you mean train.lr"),
    ("model.cell", "not a key a comparison can tune"),
    ("seed", "not a key a comparison can tune"),
    ("train.max_steps", "not a key a comparison can tune"),
    ("model.tie_weights", "not a key a comparison can tune"),
    ("train.bptt", "no default range; give one"),
    ("train.lr=0.1", "the range must look like LOW:HIGH"),
    ("train.lr=0.1:0.01", "LOW must be below HIGH"),
])
def test_bad_knobs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_knobs([spec], load_config())


def test_a_key_tuned_twice_is_refused():
    with pytest.raises(UserError, match="names train.lr twice"):
        parse_knobs(["train.lr", "train.lr=1e-3:1e-2"], load_config())


def test_candidates_cover_the_range_evenly_and_repeat():
    knob = Knob("train.lr", 1e-4, 1e-2, log=True, integer=False)
    settings = candidates([knob], 8, seed=0)
    assert settings == candidates([knob], 8, seed=0)  # the same for every cell and every session
    exponents = sorted(math.log10(s["train.lr"]) for s in settings)
    assert -4 <= exponents[0] and exponents[-1] <= -2
    # a Sobol sequence puts one point in each eighth of the (log) range
    assert sorted(int((e + 4) / 2 * 8) for e in exponents) == list(range(8))


class FakeTrainer:
    """Stands in for lmrnn.train: validation ppl = |log10 lr + 2.5| * 100 + 100 / fraction (lower
    with more budget, best near lr 10^-2.5); writes the summary a trial would have; can be told
    to stop ("interrupt") at its n-th call or to diverge for some settings."""

    def __init__(self, interrupt_at=None, diverge_above=None, overflow_above=None):
        self.calls, self.interrupt_at, self.diverge_above = [], interrupt_at, diverge_above
        self.overflow_above = overflow_above  # a finite loss whose perplexity overflows: inf

    def __call__(self, cfg, run_dir, resume, fraction):
        self.calls.append((run_dir.name, resume, fraction))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / checkpoint.TRAIN_STATE).write_bytes(b"state")
        if self.diverge_above and cfg["train.lr"] > self.diverge_above:
            raise Diverged("training diverged")
        if len(self.calls) == self.interrupt_at:
            summary = {"stopped_by": "interrupt", "best_val_ppl": 1.0, "budget_used": fraction / 2}
        else:
            ppl = abs(math.log10(cfg["train.lr"]) + 2.5) * 100 + 100 / fraction
            ppl = math.inf if self.overflow_above and cfg["train.lr"] > self.overflow_above else ppl
            summary = {"stopped_by": "budget" if fraction == 1.0 else "paused", "best_val_ppl": ppl,
                       "budget_used": fraction, "steps": round(900 * fraction)}
        checkpoint.write_summary(run_dir, summary)
        return summary


def test_search_promotes_the_best_third_and_picks_on_validation(tmp_path):
    settings = candidates([Knob("train.lr", 1e-4, 1e-1, True, False)], 9, seed=0)
    trainer = FakeTrainer()
    found = search(settings, lambda s: s, tmp_path, trainer)
    assert [fraction for _, _, fraction in trainer.calls] == [1 / 9] * 9 + [1 / 3] * 3 + [1.0] * 2
    rung_one = sorted(settings, key=lambda s: abs(math.log10(s["train.lr"]) + 2.5))[:3]
    assert sorted(name for name, _, f in trainer.calls if f == 1 / 3) == \
        sorted(f"trial{settings.index(s)}" for s in rung_one)
    assert sorted(name for name, _, f in trainer.calls if f == 1.0) == \
        sorted(f"trial{settings.index(s)}" for s in rung_one[:2])  # the best two go on to the full budget
    assert found["best"] == rung_one[0]
    assert all(resume for _, resume, f in trainer.calls if f > 1 / 9)  # promoted trials continue, not restart
    assert sorted(len(t["val_ppl_by_rung"]) for t in found["trials"]) == [1] * 6 + [2] + [3] * 2
    assert sorted(t["steps_by_rung"] for t in found["trials"]) == [[100]] * 6 + [[100, 300]] + [[100, 300, 900]] * 2


def test_an_interrupted_search_continues_where_it_stopped(tmp_path):
    settings = candidates([Knob("train.lr", 1e-4, 1e-1, True, False)], 9, seed=0)
    first = FakeTrainer(interrupt_at=11)
    assert search(settings, lambda s: s, tmp_path, first) == {"interrupted": "interrupt"}
    second = FakeTrainer()
    found = search(settings, lambda s: s, tmp_path, second)
    # the ten trainings decided before the stop are not repeated; the interrupted one resumes
    assert len(second.calls) == 4 and second.calls[0] == (first.calls[-1][0], True, 1 / 3)
    assert found == search(settings, lambda s: s, tmp_path / "straight", FakeTrainer())
    with pytest.raises(UserError, match="search over other settings"):
        search(settings[:3], lambda s: s, tmp_path, FakeTrainer())
    assert len(json.loads((tmp_path / SEARCH).read_text())) == 9


def test_diverged_trials_rank_last_and_a_search_where_all_diverge_says_so(tmp_path):
    settings = candidates([Knob("train.lr", 1e-4, 1e-1, True, False)], 3, seed=0)
    found = search(settings, lambda s: s, tmp_path / "some", FakeTrainer(diverge_above=1e-2))
    failed = [t for t in found["trials"] if t["val_ppl"] is None]
    assert failed and all(t["train.lr"] > 1e-2 for t in failed) and found["best"]["train.lr"] <= 1e-2
    assert checkpoint.read_summary(tmp_path / "some" / f"trial{failed[0]['trial']}")["stopped_by"] == "diverged"
    overflowed = search(settings, lambda s: s, tmp_path / "inf", FakeTrainer(overflow_above=1e-2))
    assert [t["val_ppl"] for t in overflowed["trials"]] == [t["val_ppl"] for t in found["trials"]]  # failed alike
    with pytest.raises(UserError, match="every trial .* diverged"):
        search(settings, lambda s: s, tmp_path / "all", FakeTrainer(diverge_above=1e-9))
