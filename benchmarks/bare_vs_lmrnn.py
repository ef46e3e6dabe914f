"""lmrnn against a bare PyTorch loop at equal CPU minutes, one cell at a time, side by side.

    python benchmarks/bare_vs_lmrnn.py --minutes 8 [--cells rnn,lstm,gru] [--bare adamw|sgd]
        [--config configs/small.yaml] [-s key=value ...]

The bare loop is the 60 lines a user would write from pytorch/examples' word_language_model:
PTB's own words (one id each, <eos> per line), batch 20 x bptt 35, embedding -> 2-layer
nn.RNN / nn.LSTM / nn.GRU of 200 -> dropout 0.2 -> linear decoder (untied), the hidden state
carried across windows, clip 0.25, and either AdamW at 2e-3 ("adamw") or SGD at 20 divided by 4
whenever validation does not improve ("sgd", word_language_model's own). It validates at each
epoch end and when its minutes are up (its validations count against its minutes, as lmrnn's
do), and keeps the best weights.

lmrnn trains the same cell from the given config (default: configs/small.yaml at word level,
its per-cell default learning rate) for the same training minutes. Both are then scored by the
same exact evaluation: the test split read as one stream (batch 1), so neither figure depends
on an evaluation batch. The two never run at once (they would slow each other). Prints a table
and writes benchmarks/results/bare-vs-lmrnn-<minutes>min.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmrnn import checkpoint
from lmrnn.config import load_config
from lmrnn.data import Corpus, Split, load_split
from lmrnn.evaluate import score_split
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


def bare_loop(cell: str, minutes: float, optimizer_name: str, seed: int = 1) -> dict:
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
    start = time.perf_counter()  # its validations count against its minutes, as lmrnn's do

    def seconds() -> float:
        return time.perf_counter() - start

    while seconds() < 60 * minutes:
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
            if seconds() >= 60 * minutes:
                break
        epoch += 1
        val = stream_nll(model, valid_ids)
        if val < best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
        elif optimizer is None:
            lr /= 4.0
    model.load_state_dict(best_state)
    test = stream_nll(model, test_ids)
    return {"steps": steps, "epochs": epoch, "seconds": round(seconds(), 1), "best_val_ppl": math.exp(best),
            "test_word_ppl": math.exp(test)}


def lmrnn_run(cell: str, minutes: float, config: Path, overrides: list[str], out: Path) -> dict:
    cfg = load_config(config, ["tokenizer.model_type=word", "tokenizer.vocab_size=0", "train.epochs=0",
                               "train.max_steps=0", f"train.max_minutes={minutes}", *overrides],
                      {"data.source": str(PTB), "model.cell": cell})
    summary = train(cfg, out, overwrite=True)
    model, tokenizer, saved = checkpoint.load_run(out, torch.device("cpu"))
    test: Split = load_split(Corpus(saved.data), "test", tokenizer)
    nll, _ = score_split(model, test, 1, saved.train.bptt)  # one stream, as for the bare loop
    return {"steps": summary["steps"], "epochs": summary["epochs"], "train_seconds": summary["train_seconds"],
            "best_val_ppl": summary["best_val_ppl"], "test_word_ppl": math.exp(nll / test.words),
            "tokens_per_second": summary["train_tokens_per_second"], "lr": summary["lr"],
            "others_cpu_share": summary["others_cpu_share"], "params": summary["params"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--cells", type=lambda s: s.split(","), default=["rnn", "lstm", "gru"])
    parser.add_argument("--bare", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "small.yaml")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    rows = []
    for cell in args.cells:
        bare = bare_loop(cell, args.minutes, args.bare)
        mine = lmrnn_run(cell, args.minutes, args.config, args.overrides,
                         ROOT / "checkpoints" / f"bare-vs-lmrnn-{args.minutes:g}min-{cell}")
        rows.append({"cell": cell, "bare": bare, "lmrnn": mine})
        print(f"{cell:<5} | bare ({args.bare}) test word ppl {bare['test_word_ppl']:8.2f} in {bare['steps']:,} steps "
              f"| lmrnn {mine['test_word_ppl']:8.2f} in {mine['steps']:,} steps (lr {mine['lr']:g}) "
              f"| lmrnn / bare {mine['test_word_ppl'] / bare['test_word_ppl']:.3f}", flush=True)
    out = ROOT / "benchmarks" / "results" / f"bare-vs-lmrnn-{args.minutes:g}min.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "rows": rows, "minutes": args.minutes, "bare_optimizer": args.bare, "config": str(args.config.relative_to(ROOT)),
        "overrides": args.overrides, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(), "cores": os.cpu_count(),
        "command": f"python benchmarks/bare_vs_lmrnn.py --minutes {args.minutes:g} --bare {args.bare}"}, indent=2) + "\n")


if __name__ == "__main__":
    main()
