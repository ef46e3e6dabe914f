"""How saturated are a trained LSTM's cells? Gate means and |c| over real text, per layer.

    python benchmarks/lstm_cell_state.py RUN... [--text FILE] [--tokens 2000] [--out FILE.json]

Runs each LSTM run's recurrence step by step (eval mode, from the zero state, the gates
recomputed from the weights: i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh), PyTorch's gate
order) over the first --tokens tokens of --text (default: the shipped stories validation split),
and reports per layer the mean input, forget and output gate, the mean |c|, and the share of
cell values with |c| > 3, where tanh'(c) = 1 - tanh(c)^2 < 0.01: there the output h = o * tanh(c)
no longer moves with c, so almost no gradient from the loss reaches what the cell stores.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lmrnn import checkpoint

REPO = Path(__file__).resolve().parent.parent


def cell_statistics(run_dir: Path, text: str, tokens: int) -> list[dict]:
    model, tokenizer, cfg = checkpoint.load_run(run_dir, torch.device("cpu"))
    if cfg.model.cell != "lstm":
        raise SystemExit(f"{run_dir} is a {cfg.model.cell} run, not an LSTM")
    ids = torch.tensor([tokenizer.eos_id] + tokenizer.encode(text)[:tokens - 1])
    rows = []
    with torch.inference_mode():
        x = model.embedding(ids)  # (T, E): one stream, no batch
        for layer in range(cfg.model.num_layers):
            w_ih, w_hh = getattr(model.rnn, f"weight_ih_l{layer}"), getattr(model.rnn, f"weight_hh_l{layer}")
            bias = getattr(model.rnn, f"bias_ih_l{layer}") + getattr(model.rnn, f"bias_hh_l{layer}")
            h = c = torch.zeros(cfg.model.hidden_size)
            gates, cells, outputs = [], [], []
            for x_t in x:
                i, f, g, o = (w_ih @ x_t + w_hh @ h + bias).chunk(4)
                i, f, o = i.sigmoid(), f.sigmoid(), o.sigmoid()
                c = f * c + i * g.tanh()
                h = o * c.tanh()
                gates.append(torch.stack([i, f, o]))
                cells.append(c)
                outputs.append(h)
            means = torch.stack(gates).mean(dim=(0, 2))  # (3,)
            cell = torch.stack(cells).abs()
            rows.append({"run": str(run_dir), "layer": layer, "input_gate": means[0].item(),
                         "forget_gate": means[1].item(), "output_gate": means[2].item(),
                         "mean_abs_c": cell.mean().item(), "saturated_share": (cell > 3).float().mean().item()})
            x = torch.stack(outputs)  # the next layer's input
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--text", type=Path, default=REPO / "corpora" / "stories" / "valid.txt")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("lstm-cell-state.json"))
    args = parser.parse_args()
    text = " ".join(args.text.read_text(encoding="utf-8").split())
    rows = [row for run in args.runs for row in cell_statistics(run, text, args.tokens)]
    print(f"{'run':<44} layer  input  forget  output  mean |c|  |c| > 3")
    for r in rows:
        print(f"{r['run']:<44} {r['layer']:>5}  {r['input_gate']:5.2f}  {r['forget_gate']:6.2f}  {r['output_gate']:6.2f}"
              f"  {r['mean_abs_c']:8.2f}  {r['saturated_share']:7.1%}")
    args.out.write_text(json.dumps({"text": str(args.text), "tokens": args.tokens, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
