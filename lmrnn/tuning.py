"""Per-cell hyperparameter search at an equal budget: successive halving over quasi-random points.

    lmrnn compare DATA --tune train.lr [--tune model.dropout=0:0.5] --trials 9

Rankings of recurrent cells flip unless each is tuned with the same effort (Melis, Dyer &
Blunsom 2018; Greff et al. 2017), so every cell is searched over the same N candidate settings:
scrambled Sobol points (Owen 1998) in the unit cube, mapped onto each key's range, on a log scale
where the range spans a factor of 10 or more. Successive halving (Jamieson & Talwalkar 2016, with
the rungs of Li et al. 2018's Hyperband bracket) then spends the budget:

    eta = 3, R = floor(log_eta N)
    rung r = 0 .. R: the trials still in train to eta^(r - R) of the full budget, and the best
    1/eta of them by validation perplexity (at least two) go on to the next rung

At least two trials reach the full budget, and the better there is chosen: a ranking at 1/3 of
the budget does not hold at its end. In the 800-step PTB comparison the LSTM's rates 2.1e-2 and
2.8e-2 were level at 1/3 (validation 204.0 and 203.6), and at the end 2.1e-2 was ahead (test
122 against 135 on seed 1; docs/results.md). N = 9: 9 trials train to 1/9 of
the budget, 3 to 1/3 and 2 to the end: three full budgets per cell.

A trial is paused at its rung, not restarted: its learning-rate schedule is the whole
budget's from the first step (lmrnn.train's pause_at), and --resume continues it exactly, so a
promoted trial is the run it would have been had it never stopped. Judging a run early has a
known bias (short-horizon bias, Wu et al. 2018), worst inside the learning-rate warm-up: there
every rate is judged before it has peaked, which favours high ones, so the report flags a first
rung that ends before train.warmup_steps.

Each trial is an ordinary run directory, tuning/<cell>/trial<k>/, and each rung's validation
figure is written to tuning/<cell>/search.json as soon as it is known, so an interrupted search
continues where it stopped. Selection reads validation only: a paused trial is never scored on
test, and the chosen setting is then trained afresh for every seed of the comparison.

Why not Optuna (TPE with a successive-halving pruner)? Its TPE sampler draws its first
n_startup_trials (10) at random, so at the 3 to 27 trials a CPU budget allows it is random search
with more dependencies; Sobol points cover a range more evenly than random ones at such N, and
successive halving is these 40 lines.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmrnn import checkpoint
from lmrnn.config import RunConfig
from lmrnn.config_parser import flatten, load_config
from lmrnn.errors import Diverged, UserError
from lmrnn.files import atomic_write

ETA = 3  # successive halving keeps the best third at each rung (Li et al. 2018)
SEARCH = "search.json"

# ranges for keys named without one (--tune KEY); any numeric key takes --tune KEY=LOW:HIGH. AdamW's
# rate: in the 8-minute PTB comparison the LSTM chose 2.8e-2, the top of the former [1e-4, 3e-2],
# and every rate below 1e-3 ended its first rung 3.7-9.8x above its cell's best (docs/results.md)
DEFAULT_RANGES = {
    "train.lr": {"adamw": (3e-4, 1e-1), "sgd": (0.3, 60.0), "nt_asgd": (0.3, 60.0)},
    "train.clip_grad_norm": (0.05, 5.0),
    "train.weight_decay": (1e-3, 0.3),
    "model.dropout": (0.0, 0.6),
    "model.embedding_dropout": (0.0, 0.3),
    "model.weight_drop": (0.0, 0.5),
    "model.init_range": (0.03, 3.0),
}
# what a comparison holds fixed: the cell, its size, the seed, the budget
NOT_TUNABLE = {"seed", "model.cell", "model.hidden_size", "model.vocab_size", "train.epochs", "train.max_steps",
               "train.max_minutes"}


@dataclass(frozen=True)
class Knob:
    """One tuned key and its range."""
    key: str
    low: float
    high: float
    log: bool
    integer: bool

    def value(self, u: float) -> float | int:
        """The value at u in [0, 1), to 4 significant digits (readable, and the same in every file)."""
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        return round(v) if self.integer else float(f"{v:.4g}")


def parse_knobs(specs: list[str], cfg: RunConfig) -> list[Knob]:
    """--tune KEY or KEY=LOW:HIGH, each a numeric config key, at most once."""
    leaves = flatten(cfg)
    knobs = []
    for spec in specs:
        key, sep, bounds = (part.strip() for part in spec.partition("="))
        if key not in leaves:
            load_config(overrides=[f"{key}=0"])  # raises the config's own unknown-key error
            raise UserError(f"--tune {key}: a section, not a key")
        if key in NOT_TUNABLE or isinstance(leaves[key], bool) or not isinstance(leaves[key], (int, float)):
            raise UserError(f"--tune {key}: not a key a comparison can tune (numeric keys only; not the cell, "
                            "its size, the seed or the budget)")
        if sep:
            try:
                low, high = (float(x) for x in bounds.split(":"))
            except ValueError:
                raise UserError(f"--tune {spec!r}: the range must look like LOW:HIGH, e.g. {key}=1e-4:1e-2") from None
        elif key in DEFAULT_RANGES:
            ranges = DEFAULT_RANGES[key]
            low, high = ranges[cfg.train.optimizer] if isinstance(ranges, dict) else ranges
        else:
            raise UserError(f"--tune {key}: no default range; give one, e.g. --tune {key}=LOW:HIGH")
        if not low < high:
            raise UserError(f"--tune {spec!r}: LOW must be below HIGH")
        if any(k.key == key for k in knobs):
            raise UserError(f"--tune names {key} twice")
        knobs.append(Knob(key, low, high, log=low > 0 and high / low >= 10, integer=isinstance(leaves[key], int)))
    return knobs


def candidates(knobs: list[Knob], trials: int, seed: int) -> list[dict]:
    """`trials` settings, {key: value} each: scrambled Sobol points mapped onto the ranges. The
    same for every cell of a comparison."""
    from torch.quasirandom import SobolEngine

    points = SobolEngine(len(knobs), scramble=True, seed=seed).draw(trials).tolist()
    return [{knob.key: knob.value(u) for knob, u in zip(knobs, point)} for point in points]


def rungs(trials: int) -> list[tuple[float, int]]:
    """(fraction of the full budget, trials trained to it) for each rung of successive halving."""
    top = int(math.floor(math.log(trials) / math.log(ETA) + 1e-9))
    schedule, alive = [], trials
    for rung in range(top + 1):
        schedule.append((float(ETA) ** (rung - top), alive))
        alive = max(min(2, alive), alive // ETA)  # two reach the end where there are two
    return schedule


def rank_key(record: dict, rung: int) -> tuple[float, int]:
    """Lowest validation perplexity first; a failed trial (None) last; ties by trial number."""
    value = record["val_ppl"][rung]
    return (math.inf if value is None else value, record["trial"])


def search(settings: list[dict], trial_config: Callable[[dict], RunConfig], folder: Path, train_trial: Callable) -> dict:
    """Successive halving over `settings` in `folder`. `train_trial(cfg, run_dir, resume, pause_at)`
    trains one trial to a fraction of its budget and returns its summary (or raises Diverged).
    Returns {"best": setting, "trials": [...]} or {"interrupted": how} when a stop signal came."""
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / SEARCH
    records = _read_records(state_path, settings)
    schedule = rungs(len(settings))
    alive = [r["trial"] for r in records]
    for rung, (fraction, _) in enumerate(schedule):
        for trial in alive:
            record = records[trial]
            if len(record["val_ppl"]) > rung:
                continue  # decided in an earlier session
            run_dir = folder / f"trial{trial}"
            summary = checkpoint.read_summary(run_dir)
            reached = summary is not None and (summary.get("stopped_by") in ("budget", "diverged") or
                                               summary.get("budget_used", 0.0) >= fraction - 1e-9)
            if not reached:
                resume = (run_dir / checkpoint.TRAIN_STATE).is_file()
                try:
                    summary = train_trial(trial_config(record["setting"]), run_dir, resume, fraction)
                except Diverged:
                    summary = {"stopped_by": "diverged", "best_val_ppl": None, "budget_used": fraction}
                    checkpoint.write_summary(run_dir, summary)
                if summary["stopped_by"] not in ("budget", "paused", "diverged"):
                    return {"interrupted": summary["stopped_by"]}
            # steps reached at each rung: the report checks that the first came after the warm-up
            record.setdefault("steps", [None] * len(record["val_ppl"])).append(summary.get("steps"))
            ppl = summary["best_val_ppl"]
            record["val_ppl"].append(ppl if ppl is not None and math.isfinite(ppl) else None)  # overflowed: failed
            record["budget"] = fraction
            atomic_write(state_path, json.dumps(records, indent=2) + "\n")
        if rung + 1 < len(schedule):
            alive = sorted(alive, key=lambda t: rank_key(records[t], rung))[:schedule[rung + 1][1]]
    best = min(alive, key=lambda t: rank_key(records[t], len(schedule) - 1))
    if records[best]["val_ppl"][-1] is None:
        raise UserError(f"every trial of the search in {folder} diverged; narrow the --tune ranges")
    return {"best": records[best]["setting"], "best_trial": best,
            "trials": [{"trial": r["trial"], **r["setting"], "val_ppl": r["val_ppl"][-1], "budget": r["budget"],
                        "val_ppl_by_rung": r["val_ppl"], "steps_by_rung": r.get("steps", [])} for r in records]}


def _read_records(path: Path, settings: list[dict]) -> list[dict]:
    """The search's records so far, or fresh ones; refused when they were made for other settings."""
    fresh = [{"trial": k, "setting": s, "val_ppl": [], "budget": 0.0} for k, s in enumerate(settings)]
    if not path.is_file():
        return fresh
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return fresh  # written atomically: only a hand edit breaks it; start the records again
    if [r.get("setting") for r in saved] != settings:
        raise UserError(f"{path} holds a search over other settings; use --overwrite or another --out")
    return saved


def plan_size(trials: int) -> int:
    """How many trainings (trial x rung) one cell's search runs."""
    return sum(count for _, count in rungs(trials))
