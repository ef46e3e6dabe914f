"""A fair comparison of recurrent cells: same tokenizer, data order, batch shape, BPTT length,
optimizer and budget; hidden sizes matched by parameter count (or equal); several seeds.

    comparisons/NAME/
      request.json         what was asked (checked when the comparison is resumed)
      tokenizer.model      trained once, shared by every run: token perplexities compare
      tuning/<cell>/       with --tune: the search's trials (run directories) and search.json
      <cell>-seed<S>/      one ordinary run directory per cell and seed
      results.json         plan, every run's summary, mean, spread and 95% interval per cell,
                           the pairwise differences, the search ("tuning")
      curves.png           validation ppl by step and by time, training loss, gradient norm
      tuning.png           with --tune: validation ppl against each tuned value, per cell
      report.md            the tables and the plots (lmrnn.comparison_report)

A run whose summary says it finished within budget is not trained again; an interrupted one is
resumed exactly (its own --resume), so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
from pathlib import Path

from lmrnn import checkpoint
from lmrnn.config import RunConfig
from lmrnn.config_parser import ADDED_IN_FORMAT, flatten, load_config
from lmrnn.console import ComparisonProgress
from lmrnn.corpus import Corpus
from lmrnn.data import load_or_train_tokenizer
from lmrnn.errors import UserError
from lmrnn.models import count_parameters
from lmrnn.comparison_report import CURVES, TUNING_PLOT, report_markdown
from lmrnn.report import plot_learning_curves, plot_tuning
from lmrnn.significance import pairwise, summarise
from lmrnn.files import atomic_write
from lmrnn.tokenizer import Tokenizer
from lmrnn.train import train
from lmrnn.tuning import ETA, Knob, candidates, plan_size, rungs, search

log = logging.getLogger(__name__)

REQUEST, RESULTS, REPORT, TUNING = "request.json", "results.json", "report.md", "tuning"
TUNING_SOBOL_SEED = 0  # the candidate settings: the same for every cell and every comparison with the same knobs
CELLS = ("rnn", "rnn_relu", "lstm", "gru", "ffnn")  # neural cells, sized by --match
NGRAM = re.compile(r"ngram(\d*)")  # ngram (model.order) or ngramN: a Kneser-Ney N-gram baseline, counted not trained
MATCH_TOLERANCE = 0.02  # --match params promises parameter counts within 2% of the reference


def ngram_order(cell: str, cfg: RunConfig) -> int | None:
    """The n of an n-gram cell name (ngram5 -> 5; ngram -> model.order); None for a neural cell."""
    found = NGRAM.fullmatch(cell)
    return None if found is None else int(found[1] or cfg.model.order)


def parse_cells(text: str) -> list[str]:
    cells = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS and not (NGRAM.fullmatch(c) and 1 <= int(NGRAM.fullmatch(c)[1] or 1) <= 10)]
    if unknown or not cells:
        raise UserError(f"--cells takes a comma-separated list of {', '.join(CELLS)} and ngram or ngramN "
                        f"(N = 1..10, e.g. ngram3,ngram5); got {text!r}")
    if len(set(cells)) != len(cells):
        raise UserError(f"--cells lists a cell twice: {text!r}")
    return cells


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 1,2,3; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct integers, e.g. 1,2,3; got {text!r}")
    return seeds


def matched_hidden_size(cfg: RunConfig, cell: str, target: int) -> int:
    """The hidden size that brings `cell`'s parameter count closest to `target`. The count grows
    with the hidden size except at H = E, where a tied model drops its H x E projection, so
    the scan runs until it is past both the target and that point."""
    best, best_gap, hidden = 1, math.inf, 1
    while True:
        size = count_parameters(dataclasses.replace(cfg.model, cell=cell, hidden_size=hidden))
        if abs(size - target) < best_gap:
            best, best_gap = hidden, abs(size - target)
        if size > target and hidden > cfg.model.embedding_dim:
            return best
        hidden += 1


def plan_sizes(cfg: RunConfig, cells: list[str], match: str) -> tuple[str, dict[str, int], dict[str, int]]:
    """Reference cell (the LSTM when compared, else the first neural cell) at model.hidden_size,
    and each neural cell's hidden size and parameter count (n-gram cells have neither until
    counted). `cfg.model.vocab_size` must be set."""
    cells = [cell for cell in cells if cell in CELLS]
    if not cells:
        return "", {}, {}
    reference = "lstm" if "lstm" in cells else cells[0]
    target = count_parameters(dataclasses.replace(cfg.model, cell=reference))
    hidden = {cell: matched_hidden_size(cfg, cell, target) if match == "params" else cfg.model.hidden_size
              for cell in cells}
    params = {cell: count_parameters(dataclasses.replace(cfg.model, cell=cell, hidden_size=hidden[cell])) for cell in cells}
    if match == "params":
        off = {cell: n / target - 1 for cell, n in params.items() if abs(n / target - 1) > MATCH_TOLERANCE}
        if off:
            raise UserError("cannot match parameter counts within 2% ("
                            + ", ".join(f"{cell} {100 * d:+.1f}%" for cell, d in off.items())
                            + "): one hidden unit more or less moves the count too far at this size; "
                            "raise model.hidden_size or use --match hidden")
    return reference, hidden, params


def compare(cfg: RunConfig, cells: list[str], seeds: list[int], match: str, out: Path,
            overwrite: bool = False, progress: ComparisonProgress | None = None,
            knobs: list[Knob] = (), trials: int = 9) -> dict:
    """Train every (cell, seed) run into `out` (skipping finished ones), then write the results,
    the plot and the report. With `knobs`, each neural cell is first tuned by successive halving
    over the same `trials` settings (lmrnn.tuning), and its best setting is what every seed
    trains. Returns the results; results["interrupted"] (the stop signal) when stopped early."""
    request = {"cells": cells, "seeds": seeds, "match": match,
               "config": {k: v for k, v in flatten(cfg).items() if k not in ("seed", "model.cell", "device")},
               **({"tune": [dataclasses.asdict(k) for k in knobs], "trials": trials} if knobs else {})}
    _claim(out, request, overwrite)
    corpus = Corpus(cfg.data)
    shared = out / checkpoint.TOKENIZER
    if shared.is_file() and not overwrite:
        tokenizer = Tokenizer.load(shared)
    else:
        tokenizer = load_or_train_tokenizer(corpus, cfg.tokenizer)
        atomic_write(shared, tokenizer.model_bytes)
    cfg.model.vocab_size = tokenizer.vocab_size
    reference, hidden, params = plan_sizes(cfg, cells, match)
    log.info("compare on %s: %s | match %s (reference %s) | %s", corpus.name, ", ".join(cells), match, reference,
             ", ".join(f"{c} hidden {hidden[c]} ({params[c]:,} params)" if c in hidden else f"{c} counted" for c in cells))

    def run_config(cell: str, seed: int, setting: dict) -> RunConfig:
        order = ngram_order(cell, cfg)
        return load_config(base=dataclasses.asdict(cfg), flags={
            "seed": seed, "tokenizer.path": str(shared.resolve()), **setting,
            **({"model.cell": cell, "model.hidden_size": hidden[cell]} if order is None
               else {"model.cell": "ngram", "model.order": order})})

    if overwrite and (out / TUNING).is_dir():
        shutil.rmtree(out / TUNING)  # --overwrite retrains everything, the search included
    tuned_cells = [cell for cell in cells if knobs and cell in CELLS]
    settings = candidates(list(knobs), trials, TUNING_SOBOL_SEED) if knobs else []
    tuning_seed = max(seeds) + 1  # not one of the reported seeds: their runs are independent of the selection
    for cell in tuned_cells:  # every trial's config is checked before anything trains
        for setting in settings:
            try:
                run_config(cell, tuning_seed, setting)
            except UserError as err:
                raise UserError(f"--tune: the setting {setting} does not suit cell {cell}: {err}") from None
    runs = [(cell, seed) for seed in seeds for cell in cells]  # all cells of a seed before the next seed
    progress = progress or ComparisonProgress(len(tuned_cells) * plan_size(trials) + len(runs))
    tuning: dict[str, dict] = {}
    summaries: list[dict] = []
    with progress:
        for cell in tuned_cells:
            def train_trial(trial_cfg: RunConfig, run_dir: Path, resume: bool, fraction: float) -> dict:
                with progress.run(f"tuning {cell}, {run_dir.name} to {fraction:.3g} of the budget") as report:
                    summary = train(trial_cfg, run_dir, resume=resume, overwrite=not resume, progress=report,
                                    pause_at=fraction)
                progress.finished()
                return summary

            found = search(settings, lambda setting: run_config(cell, tuning_seed, setting), out / TUNING / cell,
                           train_trial)
            if "interrupted" in found:
                return {"interrupted": found["interrupted"], "runs": summaries}
            tuning[cell] = found
        for cell, seed in runs:
            run_dir = out / f"{cell}-seed{seed}"
            order = ngram_order(cell, cfg)
            run_cfg = run_config(cell, seed, tuning.get(cell, {}).get("best", {}))
            summary = checkpoint.read_summary(run_dir)
            if summary is None or summary.get("stopped_by") != "budget" or overwrite:
                resume = (run_dir / checkpoint.TRAIN_STATE).is_file() and not overwrite
                size = f"order {order}" if order else f"hidden {hidden[cell]}, {params[cell]:,} params"
                with progress.run(f"{cell} seed {seed} ({size})") as report:
                    summary = train(run_cfg, run_dir, resume=resume, overwrite=not resume, progress=report)
            else:
                _check_chosen(run_dir, tuning.get(cell, {}).get("best", {}))
                progress.line(f"{run_dir.name}: finished earlier, kept")
            progress.finished()
            summaries.append({**summary, "seed": seed, "hidden_size": hidden.get(cell), "compared_as": cell})
            if order is not None:  # an n-gram model's size is known once counted
                hidden[cell], params[cell] = f"order {order}", summary["params"]
            if summary["stopped_by"] != "budget":  # a stop signal: the same command continues
                return {"interrupted": summary["stopped_by"], "runs": summaries}

    per_cell = {cell: [s for s in summaries if s["compared_as"] == cell] for cell in cells}
    results = {"corpus": corpus.name, "vocab_size": tokenizer.vocab_size, "match": match, "reference": reference, "cells": cells, "seeds": seeds,
               "hidden_sizes": hidden, "params": params, "config": request["config"],
               "per_cell": {cell: aggregate(runs) for cell, runs in per_cell.items()},
               "differences": pairwise({cell: [math.log(s["test_ppl"]) for s in runs] for cell, runs in per_cell.items()}),
               "runs": summaries}
    if knobs:
        results["tuning"] = {cell: {key: found[key] for key in ("best", "best_trial", "trials")}
                             for cell, found in tuning.items()}
        results["tuning_plan"] = {"knobs": request["tune"], "trials": trials, "eta": ETA, "rungs": rungs(trials),
                                  "seed": tuning_seed}
        plot_tuning(results, out / TUNING_PLOT)
    atomic_write(out / RESULTS, json.dumps(results, indent=2) + "\n")
    plot_learning_curves([(f"{s['cell']} seed {s['seed']}", s["cell"], checkpoint.read_metrics(Path(s["run"])))
                          for s in summaries if s["cell"] != "ngram"], out / CURVES)  # counted: no curve
    atomic_write(out / REPORT, report_markdown(results))
    return results


def _claim(out: Path, request: dict, overwrite: bool) -> None:
    """Make `out` this comparison's folder; refuse a folder that holds a different comparison
    (or anything else) unless --overwrite."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    saved_path = out / REQUEST
    if saved_path.is_file() and not overwrite:
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except ValueError:
            saved = None
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            for added in ADDED_IN_FORMAT.values():  # a key added since ran with its old behaviour
                for key, value in added.items():
                    saved["config"].setdefault(key, value)
        wanted = json.loads(json.dumps(request))
        if saved != wanted:
            keys = set(wanted) | (set(saved) if isinstance(saved, dict) else set())
            changed = sorted(k for k in keys if not isinstance(saved, dict) or saved.get(k) != wanted.get(k))
            if "config" in changed and isinstance(saved, dict) and isinstance(saved.get("config"), dict):
                was, now = saved["config"], wanted["config"]  # name the keys, so the user can set them back
                changed[changed.index("config")] = "; ".join(f"{key} {was.get(key)} -> {now.get(key)}" for key in
                                                             sorted(set(was) | set(now)) if was.get(key) != now.get(key))
            raise UserError(f"{out} holds a comparison with different settings ({', '.join(changed)}); "
                            "run the same command to resume it, or use --overwrite or another --out")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty and holds no comparison; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(saved_path, json.dumps(request, indent=2) + "\n")


def _check_chosen(run_dir: Path, chosen: dict) -> None:
    """A finished run is kept only if it trained the setting the search chose: a search resumed
    with another plan (or another lmrnn) can choose differently from the one the run was made for."""
    trained = flatten(checkpoint.read_config(run_dir))
    differ = [f"{key} {trained[key]:g}, now {value:g}" for key, value in chosen.items() if trained[key] != value]
    if differ:
        raise UserError(f"{run_dir} trained a setting the search no longer chooses ({'; '.join(differ)}); "
                        "remove that run folder to train it again, or use --overwrite")


STATS = {"best_val_ppl": "best val ppl", "test_ppl": "test ppl", "test_word_ppl": "test word ppl",
         "test_bits_per_byte": "test bits/byte", "train_tokens_per_second": "tokens/s", "wall_seconds": "wall"}


def aggregate(summaries: list[dict]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation (0 for one seed), min, max and 95% interval of each figure over seeds."""
    return {key: summarise([float(s[key]) for s in summaries]) for key in STATS}
