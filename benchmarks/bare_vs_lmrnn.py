"""lmrnn against a bare PyTorch loop at equal CPU minutes, one cell at a time, side by side.

    python benchmarks/bare_vs_lmrnn.py --minutes 8 [--cells rnn,lstm,gru] [--bare adamw|sgd]
        [--config configs/small.yaml] [--preset 60=configs/ptb-cpu.yaml] [-s key=value ...]
    python benchmarks/bare_vs_lmrnn.py --minutes 8 --tuned comparisons/ptb-tuned
    python benchmarks/bare_vs_lmrnn.py --minutes 8,15,30,60 --cells lstm     # the budget curve
    python benchmarks/bare_vs_lmrnn.py --minutes 8,15,30,60 --cells lstm --bare sgd --bare-only

The bare loop is the 60 lines a user would write from pytorch/examples' word_language_model:
PTB's own words (one id each, <eos> per line), batch 20 x bptt 35, embedding -> 2-layer
nn.RNN / nn.LSTM / nn.GRU of 200 -> dropout 0.2 -> linear decoder (untied), the hidden state
carried across windows, clip 0.25, and either AdamW at 2e-3 ("adamw") or SGD at 20 divided by 4
whenever validation does not improve ("sgd", word_language_model's own). It validates at each
epoch end and when its minutes are up (its validations count against its minutes, as lmrnn's
do), and keeps the best weights. Its rate does not depend on the budget, so one bare run to the
largest budget is scored at every budget of a curve (bare_loop says how).

lmrnn trains the same cell for the same training minutes from the given config (default:
configs/small.yaml at word level, its per-cell default learning rate; --preset MINUTES=PATH
gives a budget its own preset), or with --tuned DIR from the configuration a `compare --tune`
chose for that cell (DIR/<cell>-seed1/config.yaml: its size, rate and seed). Both are then
scored by the same exact evaluation: the test split read as one stream (batch 1), so neither
figure depends on an evaluation batch. The two never run at once (they would slow each other).

Several --minutes give the curve of budget against test perplexity (a PNG beside the JSON).
Each finished row (cell, minutes, lmrnn's config and -s overrides) is written to the JSON at once
and skipped when the same command runs again, so an hour-long curve can be finished in parts. The
bare figures are written as soon as the bare run ends, and one already in the JSON for the cell
and budget serves every lmrnn configuration (the bare loop does not depend on it), so trying a
new one costs only lmrnn's minutes. The machine's speed moves by the day, so --out NEW.json
measures both again, side by side on one day. --bare-only measures the bare loop alone; a curve
draws the other optimizer's bare figures from their file too. Prints a table and writes
benchmarks/results/bare-vs-lmrnn-<minutes>min[-sgd][-tuned].json (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmrnn import checkpoint
from lmrnn.config_parser import load_config
from lmrnn.evaluate import evaluate_run
from lmrnn.train import train

ROOT = Path(__file__).resolve().parent.parent
PTB = ROOT.parent / "shared" / "corpora" / "ptb"


def read_words(path: Path, vocab: dict[str, int]) -> torch.Tensor:
    """A split as one id stream: each line's words and <eos>, ids by first appearance in train."""
    ids = [vocab.setdefault("<eos>", len(vocab))]
    for line in path.read_text(encoding="utf-8").splitlines():
        ids += [vocab.setdefault(w, len(vocab)) for w in line.split()] + [vocab["<eos>"]]
    return torch.tensor(ids)


class BareLM(nn.Module):
    def __init__(self, cell: str, vocab: int, size: int = 200, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, size)
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](size, size, layers, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(size, vocab)

    def forward(self, x, hidden=None):
        out, hidden = self.rnn(self.drop(self.embedding(x)), hidden)
        return self.decoder(self.drop(out)), hidden


def detach(hidden):
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


def stream_nll(model: BareLM, ids: torch.Tensor, bptt: int = 35) -> float:
    """Mean NLL of a split read as one stream (batch 1), the state carried."""
    model.eval()
    total, hidden = 0.0, None
    with torch.inference_mode():
        for i in range(0, len(ids) - 1, bptt):
            x, y = ids[i:i + bptt][None], ids[i + 1:i + 1 + bptt][None]
            x = x[:, :y.size(1)]
            logits, hidden = model(x, hidden)
            total += F.cross_entropy(logits[0], y[0], reduction="sum").item()
    model.train()
    return total / (len(ids) - 1)


def bare_loop(cell: str, budgets: list[float], optimizer_name: str, seed: int = 1) -> dict[float, dict]:
    """One bare run to the largest budget, scored as if it had stopped at each budget too. Its
    learning rate does not depend on the budget (constant AdamW; SGD divided on plateau at epoch
    ends), so the run stopped at m minutes is this run's first m minutes, plus the validation it
    would have made when its time was up. That validation and the test scoring at each budget
    are left off the clock and off the later budgets' choice of best weights."""
    torch.manual_seed(seed)
    vocab: dict[str, int] = {}
    train_ids, valid_ids, test_ids = (read_words(PTB / f"{name}.txt", vocab) for name in ("train", "valid", "test"))
    batch, bptt = 20, 35
    columns = (len(train_ids) - 1) // batch
    x_all = train_ids[:columns * batch].view(batch, columns)
    y_all = train_ids[1:columns * batch + 1].view(batch, columns)
    model = BareLM(cell, len(vocab))
    lr = 2e-3 if optimizer_name == "adamw" else 20.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr) if optimizer_name == "adamw" else None
    best, best_state, steps, epoch = math.inf, None, 0, 0
    results: dict[float, dict] = {}
    pending = sorted(budgets)
    off_clock = 0.0
    start = time.perf_counter()  # its epoch-end validations count against its minutes, as lmrnn's do

    def seconds() -> float:
        return time.perf_counter() - start - off_clock

    def stop_here(minutes: float) -> None:
        """What a run of `minutes` would report: best of its validations, the last one now."""
        nonlocal off_clock
        paused = time.perf_counter()
        val = stream_nll(model, valid_ids)
        state = {k: v.clone() for k, v in model.state_dict().items()} if val < best else best_state
        current = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        results[minutes] = {"steps": steps, "epochs": epoch, "seconds": round(seconds(), 1),
                            "best_val_ppl": math.exp(min(best, val)), "test_word_ppl": math.exp(stream_nll(model, test_ids))}
        model.load_state_dict(current)
        off_clock += time.perf_counter() - paused

    while pending:
        hidden = None
        for i in range(0, columns - 1, bptt):
            x, y = x_all[:, i:i + bptt], y_all[:, i:i + bptt]
            hidden = None if hidden is None else detach(hidden)
            logits, hidden = model(x, hidden)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            if optimizer is not None:
                optimizer.step()
            else:
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(p.grad, alpha=-lr)
            steps += 1
            while pending and seconds() >= 60 * pending[0]:
                stop_here(pending.pop(0))
            if not pending:
                break
        else:
            epoch += 1
            val = stream_nll(model, valid_ids)
            if val < best:
                best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
            elif optimizer is None:
                lr /= 4.0
    return results


def lmrnn_run(cell: str, minutes: float, config: Path, overrides: list[str], out: Path) -> dict:
    """Train `cell` for `minutes` from a preset, or from a saved run's config.yaml (a tuned cell)."""
    limits = ["train.epochs=0", "train.max_steps=0", f"train.max_minutes={minutes}"]
    if config.name == checkpoint.CONFIG:  # a run's own config.yaml is a preset too
        cfg = load_config(config, [*limits, *overrides])
    else:
        cfg = load_config(config, ["tokenizer.model_type=word", "tokenizer.vocab_size=0", *limits, *overrides],
                          {"data.source": str(PTB), "model.cell": cell})
    summary = train(cfg, out, overwrite=True)
    if summary["stopped_by"] != "budget":  # a stop signal: not this budget's figure, so no row
        raise SystemExit(f"lmrnn's {minutes:g}-minute {cell} run stopped ({summary['stopped_by']}); "
                         "the same command runs it again")
    test = evaluate_run(out, "test", device="cpu", batch_size=1)  # one stream, as for the bare loop
    return {"steps": summary["steps"], "epochs": summary["epochs"], "train_seconds": summary["train_seconds"],
            "best_val_ppl": summary["best_val_ppl"], "test_word_ppl": test.word_ppl,
            "tokens_per_second": summary["train_tokens_per_second"], "lr": summary["lr"],
            "others_cpu_share": summary["others_cpu_share"], "params": summary["params"],
            "hidden_size": cfg.model.hidden_size, "config": config_name(config)}


def config_name(config: Path) -> str:
    config = config.resolve()
    return str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config)


def cell_config(args: argparse.Namespace, cell: str, minutes: float) -> Path:
    """The config lmrnn trains `cell` from at `minutes`: the tuned run's, a budget's preset, or --config."""
    if args.tuned is not None:
        path = args.tuned / f"{cell}-seed1" / checkpoint.CONFIG
        if not path.is_file():
            raise SystemExit(f"{path} not found: --tuned takes a finished `lmrnn compare --tune` folder")
        return path
    return args.preset.get(minutes, args.config)


def results_path(args: argparse.Namespace, bare_optimizer: str) -> Path:
    tag = "-".join(f"{m:g}" for m in args.minutes) + "min" + ("-sgd" if bare_optimizer == "sgd" else "") + \
        ("-tuned" if args.tuned else "")
    return ROOT / "benchmarks" / "results" / f"bare-vs-lmrnn-{tag}.json"


def read_bare(path: Path) -> dict[tuple[str, float], dict]:
    """{(cell, minutes): bare figures} saved in `path`: kept as soon as measured (an hour-long bare
    run outlives an interrupted lmrnn row), and in each row."""
    saved = json.loads(path.read_text()) if path.is_file() else {}
    bare = {(b["cell"], b["minutes"]): b["bare"] for b in saved.get("bare_runs", [])}
    return {**bare, **{(r["cell"], r["minutes"]): r["bare"] for r in saved.get("rows", [])}}


def plot_curve(rows: list[dict], bare_optimizer: str, other_bare: dict, path: Path) -> None:
    """lmrnn and the bare loop against minutes, per cell; `other_bare` {(cell, minutes): figures}
    is the other bare optimizer's, from its own JSON, drawn dotted where it exists."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    other_name = "sgd" if bare_optimizer == "adamw" else "adamw"
    for cell in sorted({r["cell"] for r in rows}):
        mine = sorted((r for r in rows if r["cell"] == cell), key=lambda r: r["minutes"])
        minutes = [r["minutes"] for r in mine]
        line, = ax.plot(minutes, [r["lmrnn"]["test_word_ppl"] for r in mine], "o-", label=f"{cell}, lmrnn")
        for r in mine:  # each point names its preset: the preset may follow the budget
            ax.annotate(Path(r["lmrnn"].get("config", "small.yaml")).stem, (r["minutes"], r["lmrnn"]["test_word_ppl"]),
                        textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
        ax.plot(minutes, [r["bare"]["test_word_ppl"] for r in mine], "s--", color=line.get_color(),
                label=f"{cell}, bare loop ({bare_optimizer})")
        other = sorted((m, b["test_word_ppl"]) for (c, m), b in other_bare.items() if c == cell)
        if other:
            ax.plot([m for m, _ in other], [b for _, b in other], "^:", color=line.get_color(),
                    label=f"{cell}, bare loop ({other_name})")
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.1)  # room for the preset names
    ax.minorticks_off()  # the log axis's minor labels ("9x10^0") would crowd the budgets
    ax.set_xticks(sorted({r["minutes"] for r in rows}), [f"{m:g}" for m in sorted({r["minutes"] for r in rows})])
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("PTB test word perplexity (one stream)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=lambda s: [float(m) for m in s.split(",")], required=True)
    parser.add_argument("--cells", type=lambda s: s.split(","), default=["rnn", "lstm", "gru"])
    parser.add_argument("--bare", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "small.yaml")
    parser.add_argument("--preset", action="append", default=[], metavar="MINUTES=PATH",
                        help="the preset lmrnn trains from at this budget (repeatable)")
    parser.add_argument("--tuned", type=Path, help="a `compare --tune` folder: train each cell as it chose")
    parser.add_argument("--bare-only", action="store_true",
                        help="run only the bare loop (its figures then draw on the other optimizer's curve)")
    parser.add_argument("--out", type=Path, help="the results JSON (default: named by the budgets); a new "
                        "file measures the bare loop again, side by side with lmrnn on the same day")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    args.preset = {float(m): Path(p) for m, _, p in (item.partition("=") for item in args.preset)}
    out = args.out or results_path(args, args.bare)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    bare_results = read_bare(out)
    asked = []  # this command's rows, for the plot

    def write() -> None:
        out.write_text(json.dumps({
            "rows": rows, "bare_runs": [{"cell": c, "minutes": m, "bare": b} for (c, m), b in sorted(bare_results.items())],
            "bare_optimizer": args.bare, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(), "cores": os.cpu_count(),
            "command": "python benchmarks/bare_vs_lmrnn.py " + " ".join(sys.argv[1:])}, indent=2) + "\n")

    def measure_bare(cell: str) -> None:
        """One bare run serves every budget of `cell` still owed."""
        owed = [m for m in args.minutes if (cell, m) not in bare_results]
        bare_results.update({(cell, m): result for m, result in bare_loop(cell, owed, args.bare).items()})
        write()

    if args.bare_only:
        for cell in args.cells:
            measure_bare(cell)
            for m in args.minutes:
                bare = bare_results[(cell, m)]
                print(f"{cell:<5} {m:>4g} min | bare ({args.bare}) test word ppl {bare['test_word_ppl']:8.2f} "
                      f"in {bare['steps']:,} steps", flush=True)
        return
    for minutes in args.minutes:
        for cell in args.cells:
            config = cell_config(args, cell, minutes)
            # a row is one lmrnn configuration (config and overrides); the bare loop does not depend
            # on it, so a bare figure already in the file for (cell, minutes) serves every new row
            done = [r for r in rows if (r["cell"], r["minutes"], r["lmrnn"]["config"], r.get("overrides", [])) ==
                    (cell, minutes, config_name(config), args.overrides)]
            if done:
                row = done[0]
            else:
                if (cell, minutes) not in bare_results:
                    measure_bare(cell)
                bare = bare_results[(cell, minutes)]
                mine = lmrnn_run(cell, minutes, config, args.overrides,
                                 ROOT / "checkpoints" / f"bare-vs-lmrnn-{minutes:g}min-{cell}")
                row = {"cell": cell, "minutes": minutes, "overrides": args.overrides, "bare": bare, "lmrnn": mine}
                rows.append(row)
                write()
            asked.append(row)
            bare, mine = row["bare"], row["lmrnn"]
            print(f"{cell:<5} {minutes:>4g} min | bare ({args.bare}) test word ppl {bare['test_word_ppl']:8.2f} "
                  f"in {bare['steps']:,} steps | lmrnn {mine['test_word_ppl']:8.2f} in {mine['steps']:,} steps "
                  f"(hidden {mine.get('hidden_size', 256)}, lr {mine['lr']:g}, {mine.get('config', 'configs/small.yaml')}) "
                  f"| lmrnn / bare {mine['test_word_ppl'] / bare['test_word_ppl']:.3f}", flush=True)
    if len(args.minutes) > 1:
        other = read_bare(results_path(args, "sgd" if args.bare == "adamw" else "adamw"))
        plot_curve(asked, args.bare, other, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
