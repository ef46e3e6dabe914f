"""A fair comparison of recurrent cells: same tokenizer, data order, batch shape, BPTT length,
optimizer and budget; hidden sizes matched by parameter count (or equal); several seeds.

    comparisons/NAME/
      request.json         what was asked (checked when the comparison is resumed)
      tokenizer.model      trained once, shared by every run: token perplexities compare
      <cell>-seed<S>/      one ordinary run directory per cell and seed
      results.json         plan, every run's summary, mean and spread per cell
      curves.png           validation ppl by step and by time, training loss, gradient norm
      report.md            the table and the plot

A run whose summary says it finished within budget is not trained again; an interrupted one is
resumed exactly (its own --resume), so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import statistics
from pathlib import Path

from lmrnn import checkpoint
from lmrnn.config import RunConfig, flatten, load_config
from lmrnn.console import ComparisonProgress
from lmrnn.data import Corpus, load_or_train_tokenizer
from lmrnn.errors import UserError
from lmrnn.models import count_parameters
from lmrnn.report import markdown_table, plot_learning_curves
from lmrnn.tokenizer import Tokenizer

log = logging.getLogger(__name__)

REQUEST, RESULTS, REPORT, CURVES = "request.json", "results.json", "report.md", "curves.png"
CELLS = ("rnn", "rnn_relu", "lstm", "gru", "ffnn")  # neural cells, sized by --match
NGRAM = re.compile(r"ngram(\d*)")  # ngram (model.order) or ngramN: a Kneser-Ney N-gram baseline, counted not trained
MATCH_TOLERANCE = 0.02  # --match params promises parameter counts within 2% of the reference
TABLE = ["cell", "hidden", "params", "best val ppl", "test ppl", "test word ppl", "test bits/byte", "tokens/s", "wall"]


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
            overwrite: bool = False, progress: ComparisonProgress | None = None) -> dict:
    """Train every (cell, seed) run into `out` (skipping finished ones), then write the results,
    the plot and the report. Returns the results; results["interrupted"] (the stop signal) when stopped early."""
    from lmrnn.train import train  # torch: imported only when a comparison runs

    request = {"cells": cells, "seeds": seeds, "match": match,
               "config": {k: v for k, v in flatten(cfg).items() if k not in ("seed", "model.cell", "device")}}
    _claim(out, request, overwrite)
    corpus = Corpus(cfg.data)
    shared = out / checkpoint.TOKENIZER
    if shared.is_file() and not overwrite:
        tokenizer = Tokenizer.load(shared)
    else:
        tokenizer = load_or_train_tokenizer(corpus, cfg.tokenizer)
        checkpoint.atomic_write(shared, tokenizer.model_bytes)
    cfg.model.vocab_size = tokenizer.vocab_size
    reference, hidden, params = plan_sizes(cfg, cells, match)
    log.info("compare on %s: %s | match %s (reference %s) | %s", corpus.name, ", ".join(cells), match, reference,
             ", ".join(f"{c} hidden {hidden[c]} ({params[c]:,} params)" if c in hidden else f"{c} counted" for c in cells))

    runs = [(cell, seed) for seed in seeds for cell in cells]  # all cells of a seed before the next seed
    summaries: list[dict] = []
    progress = progress or ComparisonProgress(len(runs))
    with progress:
        for cell, seed in runs:
            run_dir = out / f"{cell}-seed{seed}"
            order = ngram_order(cell, cfg)
            run_cfg = load_config(base=dataclasses.asdict(cfg), flags={
                "seed": seed, "tokenizer.path": str(shared.resolve()),
                **({"model.cell": cell, "model.hidden_size": hidden[cell]} if order is None
                   else {"model.cell": "ngram", "model.order": order})})
            summary = checkpoint.read_summary(run_dir)
            if summary is None or summary.get("stopped_by") != "budget" or overwrite:
                resume = (run_dir / checkpoint.TRAIN_STATE).is_file() and not overwrite
                size = f"order {order}" if order else f"hidden {hidden[cell]}, {params[cell]:,} params"
                with progress.run(f"{cell} seed {seed} ({size})") as report:
                    summary = train(run_cfg, run_dir, resume=resume, overwrite=not resume, progress=report)
            else:
                progress.line(f"{run_dir.name}: finished earlier, kept")
            progress.finished()
            summaries.append({**summary, "seed": seed, "hidden_size": hidden.get(cell), "compared_as": cell})
            if order is not None:  # an n-gram model's size is known once counted
                hidden[cell], params[cell] = f"order {order}", summary["params"]
            if summary["stopped_by"] != "budget":  # a stop signal: the same command continues
                return {"interrupted": summary["stopped_by"], "runs": summaries}

    results = {"corpus": corpus.name, "vocab_size": tokenizer.vocab_size, "match": match, "reference": reference, "cells": cells, "seeds": seeds,
               "hidden_sizes": hidden, "params": params, "config": request["config"],
               "per_cell": {cell: aggregate([s for s in summaries if s["compared_as"] == cell]) for cell in cells},
               "runs": summaries}
    checkpoint.atomic_write(out / RESULTS, json.dumps(results, indent=2) + "\n")
    plot_learning_curves([(f"{s['cell']} seed {s['seed']}", s["cell"], checkpoint.read_metrics(Path(s["run"])))
                          for s in summaries if s["cell"] != "ngram"], out / CURVES)  # counted: no curve
    checkpoint.atomic_write(out / REPORT, report_markdown(results))
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
        if saved != json.loads(json.dumps(request)):
            changed = sorted(k for k in request if not isinstance(saved, dict) or saved.get(k) != request[k])
            raise UserError(f"{out} holds a comparison with different settings ({', '.join(changed)}); "
                            "run the same command to resume it, or use --overwrite or another --out")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty and holds no comparison; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(saved_path, json.dumps(request, indent=2) + "\n")


STATS = {"best_val_ppl": "best val ppl", "test_ppl": "test ppl", "test_word_ppl": "test word ppl",
         "test_bits_per_byte": "test bits/byte", "train_tokens_per_second": "tokens/s", "wall_seconds": "wall"}


def aggregate(summaries: list[dict]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation (0 for one seed), min and max of each figure over seeds."""
    out = {}
    for key in STATS:
        values = [float(s[key]) for s in summaries]
        out[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values), "n": len(values)}
    return out


def _mean_sd(stat: dict, digits: int) -> str:
    text = f"{stat['mean']:,.{digits}f}"
    return text + (f" ± {stat['sd']:,.{digits}f}" if stat["n"] > 1 else "")


def table_rows(results: dict) -> list[list[str]]:
    """One row per cell: figures as mean ± sample sd over the seeds."""
    rows = []
    for cell in results["cells"]:
        stats = results["per_cell"][cell]
        rows.append([cell, str(results["hidden_sizes"][cell]), f"{results['params'][cell]:,}",
                     _mean_sd(stats["best_val_ppl"], 2), _mean_sd(stats["test_ppl"], 2),
                     _mean_sd(stats["test_word_ppl"], 2), _mean_sd(stats["test_bits_per_byte"], 4),
                     _mean_sd(stats["train_tokens_per_second"], 0), _mean_sd(stats["wall_seconds"], 0) + " s"])
    return rows


# the settings beyond the plain model that a report names when they are on
REGULARISERS = ("model.locked_dropout", "model.embedding_dropout", "model.weight_drop", "model.layer_norm",
                "train.ar", "train.tar", "train.variable_bptt")


def report_markdown(results: dict) -> str:
    c = results["config"]
    budget = ", ".join(f"{k.split('.')[1]} {c[k]}" for k in ("train.max_steps", "train.max_minutes", "train.epochs") if c[k])
    seeds = results["seeds"]
    extras = ", ".join(key.split(".")[1] + ("" if c[key] is True else f" {c[key]}") for key in REGULARISERS if c.get(key))
    return (
        f"# {', '.join(results['cells'])} on {results['corpus']}\n\n"
        f"Budget per run: {budget}. Batch {c['train.batch_size']} x BPTT {c['train.bptt']}, "
        f"{c['train.optimizer']} lr {c['train.lr']} ({c['train.lr_schedule']}), clip {c['train.clip_grad_norm']}, "
        f"{c['model.num_layers']} layers, embedding {c['model.embedding_dim']}, dropout {c['model.dropout']}, "
        f"{extras + ', ' if extras else ''}tokenizer {c['tokenizer.model_type']} {results['vocab_size']} (shared by all runs). "
        f"Hidden sizes: --match {results['match']} (reference {results['reference']}). "
        f"Seeds {', '.join(map(str, seeds))}: figures are mean ± sample standard deviation"
        f"{'' if len(seeds) > 1 else ' (one seed: no spread)'}.\n\n"
        + markdown_table(TABLE, table_rows(results))
        + f"\nWord perplexity and bits/byte do not depend on the tokenizer; tokens/s counts training "
          f"tokens over training time (validation excluded); wall is the whole run, test included.\n\n"
          f"![learning curves]({CURVES})\n"
    )
