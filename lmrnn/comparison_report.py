"""The report of a comparison (lmrnn.compare): the table of cells, which differences the seeds
resolve, the search when the cells were tuned, and the budget in words: report.md is made from
results.json alone, so it can be written again from any finished comparison."""

from __future__ import annotations

from pathlib import Path

from lmrnn.report import markdown_table

CURVES, TUNING_PLOT = "curves.png", "tuning.png"
SHARED_CPU = 0.1  # a run during which other work used more than this share of the machine's CPU time is flagged
TABLE = ["cell", "hidden", "params", "lr", "best val ppl", "test ppl", "test word ppl", "95% interval", "test bits/byte",
         "tokens/s", "wall"]


def _mean_sd(stat: dict, digits: int) -> str:
    text = f"{stat['mean']:,.{digits}f}"
    return text + (f" ± {stat['sd']:,.{digits}f}" if stat["n"] > 1 else "")


def _interval(stat: dict, digits: int) -> str:
    if stat.get("ci95") is None:
        return "–"
    return f"{stat['mean'] - stat['ci95']:,.{digits}f} – {stat['mean'] + stat['ci95']:,.{digits}f}"


def shared_runs(results: dict) -> list[dict]:
    """The runs during which other work took more than SHARED_CPU of the machine's CPU time."""
    return [s for s in results["runs"] if (s.get("others_cpu_share") or 0.0) > SHARED_CPU]


def table_rows(results: dict) -> list[list[str]]:
    """One row per cell: figures as mean ± sample sd over the seeds, the 95% interval of the
    mean test word perplexity; tokens/s marked * when a run of the cell shared the machine."""
    shared = {s["compared_as"] for s in shared_runs(results)}
    lrs = {s["compared_as"]: s.get("lr") for s in results["runs"]}
    rows = []
    for cell in results["cells"]:
        stats = results["per_cell"][cell]
        lr = lrs.get(cell)
        rows.append([cell, str(results["hidden_sizes"][cell]), f"{results['params'][cell]:,}",
                     "–" if lr is None or str(results["hidden_sizes"][cell]).startswith("order") else f"{lr:.3g}",
                     _mean_sd(stats["best_val_ppl"], 2), _mean_sd(stats["test_ppl"], 2),
                     _mean_sd(stats["test_word_ppl"], 2), _interval(stats["test_word_ppl"], 1),
                     _mean_sd(stats["test_bits_per_byte"], 4),
                     _mean_sd(stats["train_tokens_per_second"], 0) + (" *" if cell in shared else ""),
                     _mean_sd(stats["wall_seconds"], 0) + " s"])
    return rows


# the settings beyond the plain model that a report names when they are on
REGULARISERS = ("model.locked_dropout", "model.embedding_dropout", "model.weight_drop", "model.layer_norm",
                "train.ar", "train.tar", "train.variable_bptt")


def budget_text(results: dict) -> str:
    """The budget, and what it makes equal: steps and tokens (one batch shape for all), or time."""
    c = results["config"]
    if c["train.max_minutes"] and not (c["train.max_steps"] or c["train.epochs"]):
        return (f"{c['train.max_minutes']:g} minutes of training per run (equal wall time; the tokens each run "
                f"sees follow its speed, the tokens/s column)")
    limits = ", ".join(f"{k.split('.')[1]} {c[k]:g}" for k in ("train.max_steps", "train.max_minutes", "train.epochs") if c[k])
    tokens = sorted({s["train_tokens"] for s in results["runs"] if s["cell"] != "ngram"})
    same = f"; equal steps and tokens: {tokens[0]:,} training tokens each" if len(tokens) == 1 else ""
    return f"{limits}, whichever comes first{same}"


def report_markdown(results: dict) -> str:
    c = results["config"]
    seeds = results["seeds"]
    extras = ", ".join(key.split(".")[1] + ("" if c[key] is True else f" {c[key]}") for key in REGULARISERS if c.get(key))
    tuned = "tuning" in results
    lr_text = "lr per cell (the lr column)" if tuned or not c["train.lr"] else f"lr {c['train.lr']}"
    text = (
        f"# {', '.join(results['cells'])} on {results['corpus']}\n\n"
        f"Budget per run: {budget_text(results)}. Batch {c['train.batch_size']} x BPTT {c['train.bptt']}, "
        f"{c['train.optimizer']} {lr_text} ({c['train.lr_schedule']}), clip {c['train.clip_grad_norm']}, "
        f"{c['model.num_layers']} layers, embedding {c['model.embedding_dim']}, dropout {c['model.dropout']}, "
        f"{extras + ', ' if extras else ''}tokenizer {c['tokenizer.model_type']} {results['vocab_size']} (shared by all runs). "
        f"Hidden sizes: --match {results['match']} (reference {results['reference']}). "
        f"Seeds {', '.join(map(str, seeds))}: figures are mean ± sample standard deviation"
        f"{', with the 95% interval of the mean test word perplexity' if len(seeds) > 1 else ' (one seed: no spread)'}.\n\n"
        + markdown_table(TABLE, table_rows(results))
        + "\nWord perplexity and bits/byte do not depend on the tokenizer; tokens/s counts training "
          "tokens over training time (validation excluded); wall is the whole run, test included.\n"
    )
    shared = shared_runs(results)
    if shared:
        text += ("\n\\* Shared the machine: other work took " + ", ".join(
            f"{100 * s['others_cpu_share']:.0f}% of the CPU time during {Path(s['run']).name}" for s in shared)
            + ". Their tokens/s and wall times understate the cells' speed; perplexities at a step or token "
              "budget are unaffected, at a time budget they are not.\n")
    text += "\n" + differences_markdown(results)
    if tuned:
        text += "\n" + tuning_markdown(results)
    return text + f"\n![learning curves]({CURVES})\n"


def differences_markdown(results: dict) -> str:
    """Which differences the seeds resolve: Welch's 95% interval on the test loss (lmrnn.significance)."""
    if len(results["seeds"]) < 2:
        return "## Differences\n\nOne seed per cell: no interval, so no difference is resolved.\n"
    rows = [[d["better"], d["worse"], f"{d['difference']:+.4f}",
             "–" if d["low"] is None else f"{d['low']:+.4f} to {d['high']:+.4f}", "yes" if d["resolved"] else "no"]
            for d in results["differences"]]
    return ("## Differences\n\nTest loss (nats per token) of the better cell minus the worse, with Welch's 95% "
            "interval over the seeds; resolved when the interval excludes zero.\n\n"
            + markdown_table(["better", "worse", "difference", "95% interval", "resolved"], rows))


def tuning_markdown(results: dict) -> str:
    plan = results["tuning_plan"]
    knobs = ", ".join(f"{k['key']} in [{k['low']:g}, {k['high']:g}]{' (log scale)' if k['log'] else ''}"
                      for k in plan["knobs"])
    schedule = ", ".join(f"{count} to {fraction:.3g}" for fraction, count in plan["rungs"])
    rows = []
    for cell, found in results["tuning"].items():
        best = next((t for t in found["trials"] if t["trial"] == found.get("best_trial")), None)
        rows.append([cell, ", ".join(f"{k} {v:g}" for k, v in found["best"].items()),
                     "–" if best is None or best["val_ppl"] is None else f"{best['val_ppl']:.2f} at {best['budget']:.3g}",
                     str(sum(t["val_ppl"] is None for t in found["trials"]))])
    edges, short = edge_choices(results), rungs_inside_warmup(results)
    warning = ("\n**At the edge of the search:** " + "; ".join(edges) + ". The best setting may lie beyond the "
               "range searched: widen it (--tune KEY=LOW:HIGH) before reading the ranking.\n") if edges else ""
    warning += ("\n**The first rung ended inside the warm-up:** " + "; ".join(short) + ". Every rate was judged "
                "before it had peaked, which favours high rates (short-horizon bias, Wu et al. 2018): set "
                "train.warmup_steps below the first rung's steps before reading the choice.\n") if short else ""
    return (f"## Tuning\n\nEach neural cell searched {knobs} over the same {plan['trials']} settings (scrambled "
            f"Sobol points), by successive halving with eta {plan['eta']}: trials trained to a fraction of the "
            f"budget, {schedule}. Trials ran with seed {plan['seed']}, chosen on validation only; the chosen "
            f"setting then trained for every seed above.\n\n"
            + markdown_table(["cell", "chosen", "val ppl of the chosen trial, at a fraction of the budget",
                              "diverged trials"], rows) + warning
            + f"\n![validation perplexity against each tuned value]({TUNING_PLOT})\n")


def edge_choices(results: dict) -> list[str]:
    """The chosen values that are the lowest or the highest tried for their key: the search did
    not bracket the best there."""
    found = []
    for cell, search in results.get("tuning", {}).items():
        for key, value in search["best"].items():
            tried = [t[key] for t in search["trials"]]
            if len(set(tried)) > 2 and value in (min(tried), max(tried)):
                found.append(f"{cell}'s {key} {value:g} is the {'highest' if value == max(tried) else 'lowest'} value tried")
    return found


def rungs_inside_warmup(results: dict) -> list[str]:
    """The cells whose first rung stopped a trial before the end of the learning-rate warm-up."""
    warmup = results["config"].get("train.warmup_steps", 0)
    found = []
    for cell, search in results.get("tuning", {}).items():
        first = [t["steps_by_rung"][0] for t in search["trials"] if (t.get("steps_by_rung") or [None])[0] is not None]
        if first and min(first) < warmup:
            found.append(f"{cell}'s at step {min(first)} of a {warmup}-step warm-up")
    return found
