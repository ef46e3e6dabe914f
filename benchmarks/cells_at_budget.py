"""Cells side by side at one budget in minutes: each trains from the same preset at its default
rate, and PTB test is read as one stream (batch 1), as bare_vs_lmrnn.py scores lmrnn.

    python benchmarks/cells_at_budget.py --minutes 15 --cells lstm,gru --config configs/ptb-10min.yaml \
        --reuse benchmarks/results/bare-vs-lmrnn-8-15-30-60min.json

It asks whether the LSTM catches up with the GRU given more than the tuned comparison's two
epochs. A finished row (cell, minutes, config) is kept in the JSON and skipped when the command
runs again. --reuse takes lmrnn's figures for a (cell, minutes, config) from a bare_vs_lmrnn.py
JSON instead of training it again (that script trains lmrnn the same way). Prints a table and
writes benchmarks/results/cells-<minutes>min-<config>.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bare_vs_lmrnn import ROOT, config_name, lmrnn_run  # noqa: E402


def reused_rows(path: Path | None) -> dict[tuple[str, float, str], dict]:
    """lmrnn's figures in a bare_vs_lmrnn.py JSON, by (cell, minutes, config), rows without -s only."""
    if path is None:
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(r["cell"], r["minutes"], r["lmrnn"]["config"]): {**r["lmrnn"], "from": config_name(path)}
            for r in rows if not r.get("overrides")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--cells", type=lambda s: s.split(","), default=["rnn", "lstm", "gru"])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ptb-10min.yaml")
    parser.add_argument("--reuse", type=Path, help="a bare_vs_lmrnn.py JSON whose lmrnn rows serve here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"cells-{args.minutes:g}min-{args.config.stem}.json"
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    reused = reused_rows(args.reuse)
    for cell in args.cells:
        done = [r for r in rows if (r["cell"], r["minutes"], r["config"]) == (cell, args.minutes, config_name(args.config))]
        if not done:
            figures = reused.get((cell, args.minutes, config_name(args.config))) or lmrnn_run(
                cell, args.minutes, args.config, [], ROOT / "checkpoints" / f"cells-{args.minutes:g}min-{cell}")
            rows.append({"cell": cell, "minutes": args.minutes, **figures})
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"rows": rows, "date": datetime.date.today().isoformat(),
                                       "command": "python benchmarks/cells_at_budget.py " + " ".join(sys.argv[1:])},
                                      indent=2) + "\n")
    print(f"{'cell':<5} {'minutes':>7} {'steps':>7} {'epochs':>6} {'tok/s':>7} {'lr':>8} {'val ppl':>8} {'test ppl':>8}")
    for r in rows:
        print(f"{r['cell']:<5} {r['minutes']:>7g} {r['steps']:>7,} {r['epochs']:>6.2f} {r['tokens_per_second']:>7,.0f} "
              f"{r['lr']:>8.2e} {r['best_val_ppl']:>8.2f} {r['test_word_ppl']:>8.2f}")


if __name__ == "__main__":
    main()
