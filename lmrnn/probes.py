"""Diagnostics that show why gates matter, measured on trained (and freshly initialised) models.

    gradient_flow   ||dL_T/ds_t|| against the distance T-1-t: how much the loss at the end of a
                    window can still move the state t steps back (vanishing gradients, measured)
    context_use     loss of a target when the model sees only its last k tokens, against k
                    (Khandelwal et al. 2018, "Sharp Nearby, Fuzzy Far Away")
    recall          accuracy at naming a story's hero where the last sentence recalls it, against
                    the number of words since the hero was named (the stories corpus's cue)

All three run batched and with dropout off (model.eval()).
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmrnn import checkpoint
from lmrnn.config import RunConfig
from lmrnn.errors import UserError
from lmrnn.evaluate import text_to_score, token_nll
from lmrnn.models import RNNLM, Hidden
from lmrnn.report import Series, plot_lines
from lmrnn.runtime import resolve_device
from lmrnn.stories import Story, agreement, story
from lmrnn.tokenizer import Tokenizer

VANISHED = 1e-3  # a gradient has vanished when its norm is below this fraction of its norm at distance 1
CONTEXT_TOLERANCE = 0.01  # effective context: the shortest k with a loss within 1% of full context


def _state_tensors(state: Hidden) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _no_cudnn(device: torch.device):
    """cuDNN's RNN backward refuses eval mode; the native kernels do not (and are exact)."""
    return torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else contextlib.nullcontext()


def gradient_norms(model: RNNLM, ids: torch.Tensor, length: int) -> torch.Tensor:
    """ids (N, W + length + 1): W burn-in tokens (run without gradient, so the state is a real
    one, not zeros), then `length` inputs and one target. Returns (N, length): row n, column d =
    ||dL/ds_t|| for t = length-1-d, where L is the loss of the last target and s_t the full state
    after input t (h of every layer, and c for an LSTM, concatenated)."""
    model.eval()
    device = next(model.parameters()).device
    ids = ids.to(device)
    burn_in = ids.size(1) - length - 1
    state = None
    with torch.no_grad():
        if burn_in > 0:
            _, state = model.encode(ids[:, :burn_in])
    states = []
    with _no_cudnn(device):
        for t in range(length):  # one step at a time: every intermediate state must be a graph node
            _, state = model.encode(ids[:, burn_in + t:burn_in + t + 1], state)
            states.append(_state_tensors(state))
        # rows are independent, so the gradient of the sum gives each row its own dL/ds_t
        loss = F.cross_entropy(model.next_token_logits(state), ids[:, -1], reduction="sum")
        grads = torch.autograd.grad(loss, [tensor for s in states for tensor in s], allow_unused=True)
    per_state = len(states[0])
    # None: the last c of an LSTM, which would reach the loss only through a later step
    norms = torch.stack([sum(g.pow(2).sum(dim=(0, 2)) for g in grads[t * per_state:(t + 1) * per_state]
                             if g is not None).sqrt() for t in range(length)])  # (length, N)
    return norms.flip(0).T.cpu()  # column d = distance from the last input


def vanishing_distance(mean_norms: list[float]) -> int | None:
    """The first distance >= 1 at which the norm falls below VANISHED x its value at distance 1."""
    threshold = VANISHED * mean_norms[1]
    return next((d for d in range(1, len(mean_norms)) if mean_norms[d] < threshold), None)


def probe_windows(ids: np.ndarray, count: int, width: int) -> torch.Tensor:
    """`count` windows of `width` tokens at evenly spaced starts in a token stream: (count, width)."""
    if len(ids) < width:
        raise UserError(f"the split has {len(ids):,} tokens, fewer than the {width:,} one probe window needs; "
                        "lower --length (or --max-context)")
    starts = np.linspace(0, len(ids) - width, num=count).round().astype(np.int64)
    return torch.from_numpy(np.stack([np.asarray(ids[s:s + width], dtype=np.int64) for s in starts]))


def context_losses(model: RNNLM, ids: np.ndarray, targets: np.ndarray, ks: list[int],
                   bptt: int, max_tokens: int = 100_000) -> tuple[dict[int, float], float]:
    """Mean NLL of the tokens ids[p], p in `targets`, when the model sees only ids[p-k:p] (from
    the zero state), for each k in `ks`; and with the full context ids[:p] (one stream, state
    carried from the start, as `lmrnn eval --batch-size 1` scores it). Returns ({k: loss}, full)."""
    device = next(model.parameters()).device
    stream = torch.from_numpy(np.asarray(ids[:int(targets.max()) + 1], dtype=np.int64))
    full = token_nll(model, stream[None, :-1], stream[None, 1:], bptt)[0]  # (P,): loss of ids[1..]
    full_loss = full[torch.from_numpy(targets - 1)].double().mean().item()
    target_ids = stream[torch.from_numpy(targets)].to(device)
    losses = {}
    model.eval()
    with torch.inference_mode():
        for k in ks:
            rows = max(1, max_tokens // k)  # bound the (rows, k, E) features held at once
            total = 0.0
            for start in range(0, len(targets), rows):
                chunk = targets[start:start + rows]
                # a window starting before the stream begins is clipped to it (only k >= p does that)
                starts = np.maximum(chunk - k, 0)
                if (chunk - starts == k).all():
                    x = torch.stack([stream[s:p] for s, p in zip(starts, chunk)])
                    features, _ = model.encode(x.to(device))
                    logits = model.decoder(features[:, -1])
                else:  # ragged: one row at a time
                    logits = torch.cat([model.decoder(model.encode(stream[None, s:p].to(device))[0][:, -1])
                                        for s, p in zip(starts, chunk)])
                total += F.cross_entropy(logits.float(), target_ids[start:start + rows], reduction="sum").item()
            losses[k] = total / len(targets)
    return losses, full_loss


def effective_context(losses: dict[int, float], full_loss: float) -> int | None:
    """The smallest k whose loss is within CONTEXT_TOLERANCE of the full-context loss."""
    return next((k for k in sorted(losses) if losses[k] <= full_loss * (1 + CONTEXT_TOLERANCE)), None)


def geometric_ks(max_context: int) -> list[int]:
    """1, 2, 4, ... up to max_context, which is always included."""
    ks = [2 ** i for i in range(int(math.log2(max_context)) + 1)]
    return ks if ks[-1] == max_context else ks + [max_context]


@dataclass
class RecallResult:
    fillers: int  # middle sentences between cue and recall
    distance: float  # mean words from the hero's name to the scored word
    accuracy: float  # name: its first piece is the top-1 prediction; gender: the right pronoun beats the other
    nll: float  # mean NLL of that piece, nats
    stories: int


# name: the closing sentence names the hero again (chance 1/24; 1/12 knowing the gender);
# gender: after pronoun-free sentences, a sentence opens with he or she (chance 1/2)
RECALL_TASKS = {"name": story, "gender": agreement}


def recall_by_distance(model: RNNLM, tokenizer: Tokenizer, fillers: list[int], per_bucket: int,
                       seed: int = 0, task: str = "name") -> list[RecallResult]:
    """For each filler count, `per_bucket` fresh stories (same seed for every model): feed
    [eos] + the story up to the word that needs the cue and score that word's first piece."""
    device = next(model.parameters()).device
    results = []
    model.eval()
    for count in fillers:
        rng = random.Random(f"{seed}-{count}")
        stories = [RECALL_TASKS[task](rng, count) for _ in range(per_bucket)]
        contexts, targets = zip(*(_recall_example(s, tokenizer) for s in stories))
        width = max(map(len, contexts))
        # right-padding does not reach back: position len-1 of each row sees only its own story
        x = torch.full((len(stories), width), tokenizer.eos_id, dtype=torch.int64)
        for row, context in enumerate(contexts):
            x[row, :len(context)] = torch.tensor(context)
        last = torch.tensor([len(c) - 1 for c in contexts], device=device)
        with torch.inference_mode():
            features, _ = model.encode(x.to(device))
            logits = model.decoder(features[torch.arange(len(stories), device=device), last]).float()  # (N, V)
        target = torch.tensor(targets, device=device)
        if task == "gender":  # the hero's pronoun against the other one
            rivals = [_recall_example(s, tokenizer, {"she": "he", "he": "she"}[s.answer])[1] for s in stories]
            other = torch.tensor(rivals, device=device)
            hits = logits.gather(1, target[:, None]) > logits.gather(1, other[:, None])
        else:
            hits = logits.argmax(-1) == target
        results.append(RecallResult(count, float(np.mean([s.distance for s in stories])), hits.float().mean().item(),
                                    F.cross_entropy(logits, target).item(), len(stories)))
    return results


def _recall_example(item: Story, tokenizer: Tokenizer, answer: str | None = None) -> tuple[list[int], int]:
    """Context ids ([eos] + text before the scored word) and the first piece of that word
    (`answer`, by default the story's own)."""
    answer = answer or item.answer
    prefix = item.text[:item.recall_at].rstrip()
    context = [tokenizer.eos_id] + tokenizer.encode(prefix)
    whole = [tokenizer.eos_id] + tokenizer.encode(f"{prefix} {answer}")
    if whole[:len(context)] != context:  # the word merged with the text before it: never for " word"
        raise UserError(f"the tokenizer does not split before the word {answer!r}; recall cannot be scored")
    return context, whole[len(context)]


# ---- running the probes on run directories --------------------------------------------------

@dataclass
class ProbeRun:
    label: str
    cell: str
    model: RNNLM
    tokenizer: Tokenizer
    cfg: RunConfig


def load_probe_runs(run_dirs: list[Path], device: str, same_tokenizer: bool) -> list[ProbeRun]:
    """Load each run; labels are folder names (whole paths when two names clash). Probes that
    count in tokens need one tokenizer for all runs, or their distances would not compare."""
    torch_device = resolve_device(device)
    names = [d.name for d in run_dirs]
    runs = []
    for run_dir in run_dirs:
        model, tokenizer, cfg = checkpoint.load_run(run_dir, torch_device)
        if not isinstance(model, RNNLM):
            raise UserError(f"{run_dir} is a {cfg.model.cell} model: the probes measure recurrent states")
        label = run_dir.name if names.count(run_dir.name) == 1 else str(run_dir)
        runs.append(ProbeRun(label, cfg.model.cell, model, tokenizer, cfg))
    if same_tokenizer and len({r.tokenizer.fingerprint for r in runs}) > 1:
        raise UserError("these runs were trained with different tokenizers, so distances in tokens do not "
                        "compare; probe them one at a time, or train them with one tokenizer (lmrnn compare)")
    return runs


def _validation_ids(run: ProbeRun, data: str | None) -> np.ndarray:
    """The run's validation split, or `data`'s (all of `data` when it has no splits)."""
    return text_to_score(run.cfg, run.tokenizer, data, default="validation")[0].ids


def _fresh_model(run: ProbeRun) -> RNNLM:
    """The same architecture as freshly initialised by `lmrnn train` with the run's seed."""
    torch.manual_seed(run.cfg.seed)
    return RNNLM(run.cfg.model).to(next(run.model.parameters()).device)


def probe_gradients(run_dirs: list[Path], length: int = 200, windows: int = 64, burn_in: int = 100,
                    include_init: bool = True, data: str | None = None, device: str = "auto",
                    plot: Path | None = None) -> list[dict]:
    """Mean ||dL_T/ds_t|| over `windows` validation windows against distance, per run (and per
    freshly initialised twin); plotted on a log scale."""
    if length < 2 or windows < 1 or burn_in < 0:
        raise UserError("--length must be >= 2, --windows >= 1 and --burn-in >= 0")
    rows, series = [], []
    for run in load_probe_runs(run_dirs, device, same_tokenizer=True):
        x = probe_windows(_validation_ids(run, data), windows, burn_in + length + 1)
        models = [("trained", run.model)] + ([("init", _fresh_model(run))] if include_init else [])
        for state, model in models:
            norms = gradient_norms(model, x, length).double().mean(0).tolist()
            rows.append({"run": run.label, "cell": run.cell, "model": state, "norms": norms,
                         "vanishing_distance": vanishing_distance(norms)})
            series.append(Series(f"{run.label} ({state})", list(range(length)), norms, run.label, state == "init"))
    if plot is not None:
        plot_lines(series, plot, f"gradient reaching back: mean over {windows} validation windows",
                   "distance t back from the last input", "||dL_T / ds_(T-1-t)||", logy=True)
    return rows


def probe_context(run_dirs: list[Path], max_context: int = 400, targets: int = 1000, data: str | None = None,
                  device: str = "auto", plot: Path | None = None) -> list[dict]:
    """Loss against the number of tokens of context seen, and each run's effective context."""
    if max_context < 1 or targets < 1:
        raise UserError("--max-context and --targets must be >= 1")
    ks = geometric_ks(max_context)
    rows, series = [], []
    for run in load_probe_runs(run_dirs, device, same_tokenizer=True):
        ids = _validation_ids(run, data)
        if len(ids) <= max_context + 1:
            raise UserError(f"{run.label}: the validation split has {len(ids) - 1:,} tokens; "
                            f"--max-context {max_context} needs more")
        positions = np.unique(np.linspace(max_context, len(ids) - 1, num=targets).round().astype(np.int64))
        losses, full = context_losses(run.model, ids, positions, ks, run.cfg.train.bptt)
        rows.append({"run": run.label, "cell": run.cell, "targets": len(positions), "ks": ks,
                     "losses": [losses[k] for k in ks], "full_context_loss": full,
                     "effective_context": effective_context(losses, full)})
        series.append(Series(run.label, ks, [losses[k] for k in ks], run.label))
        series.append(Series(f"{run.label} (full context)", [ks[0], ks[-1]], [full, full], run.label, dashed=True))
    if plot is not None:
        plot_lines(series, plot, "loss against context seen (state reset k tokens back)",
                   "k: tokens of context", "mean NLL of the target (nats)", logx=True)
    return rows


def probe_recall(run_dirs: list[Path], max_fillers: int = 8, per_bucket: int = 200, device: str = "auto",
                 plot: Path | None = None) -> list[dict]:
    """Recall accuracy of the hero's name and of their gender against distance in words
    (tokenizer-independent), per run."""
    if max_fillers < 0 or per_bucket < 1:
        raise UserError("--max-fillers must be >= 0 and --stories >= 1")
    rows, series = [], []
    for run in load_probe_runs(run_dirs, device, same_tokenizer=False):
        row = {"run": run.label, "cell": run.cell}
        for task in RECALL_TASKS:
            buckets = recall_by_distance(run.model, run.tokenizer, list(range(max_fillers + 1)), per_bucket, task=task)
            row[task] = [asdict(b) for b in buckets]
            series.append(Series(f"{run.label}: {task}", [b.distance for b in buckets], [b.accuracy for b in buckets],
                                 run.label, dashed=task == "gender"))
        rows.append(row)
    if plot is not None:
        plot_lines(series, plot, "hero recall: name (solid, chance 1/24), gender (dashed, chance 1/2)",
                   "words since the hero was named", "accuracy")
    return rows
