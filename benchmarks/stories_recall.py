"""Does a model remember the hero? NLL of the hero's name where the closing sentence recalls it.

    python benchmarks/stories_recall.py checkpoints/stories-rnn checkpoints/stories-lstm checkpoints/stories-gru

In each test story of `corpora/stories`, the closing sentence names the hero of the opening one,
29 to 51 words (and several distractor names) later. A model that has kept the hero in its state
puts high probability on that name; one that has not can do no better than guessing among the
names of the right gender (ln 12 = 2.48 nats), or among all 24 (ln 24 = 3.18) without the
pronouns either. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

from lmrnn import checkpoint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "corpora" / "stories"))
from generate import HEROES  # noqa: E402  (the corpus's own list of names)

NAMES = re.compile(r"\b(" + "|".join(name for names in HEROES.values() for name in names) + r")\b")


def hero_name_nll(run_dir: Path, stories: list[str]) -> float:
    """Mean NLL (nats) of the first piece of the hero's name in each closing sentence."""
    model, tokenizer, _ = checkpoint.load_run(run_dir, torch.device("cpu"))
    total = 0.0
    for story in stories:
        closing_start = story.rindex(" . ") + 3
        name = NAMES.search(story, closing_start).group(1)
        prefix = story[: story.index(name, closing_start)].rstrip()
        context = [tokenizer.eos_id] + tokenizer.encode(prefix)
        target = tokenizer.encode(f"{prefix} {name}")[len(context) - 1]
        with torch.inference_mode():
            logits, _ = model(torch.tensor([context]))
        total -= torch.log_softmax(logits[0, -1].float(), dim=-1)[target].item()
    return total / len(stories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--stories", type=Path, default=ROOT / "corpora" / "stories" / "test.txt")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stories_recall.json")
    args = parser.parse_args()
    stories = [line for line in args.stories.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [{"run": str(run), "hero_name_nll": hero_name_nll(run, stories)} for run in args.runs]
    print(f"hero-name NLL over {len(stories)} stories (guessing: {math.log(12):.2f} nats with the gender, "
          f"{math.log(24):.2f} without)")
    for row in rows:
        print(f"  {row['run']:<40} {row['hero_name_nll']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"stories": len(stories), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
