"""Everything that reads or writes a run directory.

    config.yaml        resolved config, with the derived model.vocab_size
    tokenizer.model    SentencePiece model (protobuf)
    model.safetensors  weights of the best model on validation
    train_state.pt     plain dict for --resume (weights, optimizer, schedule, step, stream position,
                       hidden state, RNG), loaded with weights_only=True
    metrics.jsonl      one JSON object per log / eval event
    summary.json       final figures

    .lock              held while a process trains into the folder (pid and host)

Every file is written through lmrnn.files (a temporary name, fsync, os.replace, fsync of the
folder), so a crash, a full disk or a power cut during a write leaves the previous complete file
in place; only metrics.jsonl is appended to, and its readers skip a line torn by a crash. Reading never unpickles code:
safetensors for weights, torch.load(weights_only=True) for the training state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import socket
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from lmrnn import __version__
from lmrnn.config import RESUMABLE_KEYS, RunConfig
from lmrnn.config_parser import FORMAT_VERSION, config_to_yaml, flatten, load_config, missing_keys, unversion
from lmrnn.errors import UserError
from lmrnn.models import RNNLM, FeedForwardLM, NgramLM, build_model
from lmrnn.ngram import KneserNey
from lmrnn.files import atomic_write, write_atomically
from lmrnn.tokenizer import Tokenizer

CONFIG, TOKENIZER, WEIGHTS = "config.yaml", "tokenizer.model", "model.safetensors"
TRAIN_STATE, METRICS, SUMMARY = "train_state.pt", "metrics.jsonl", "summary.json"
RUN_FILES = (CONFIG, TOKENIZER, WEIGHTS, TRAIN_STATE, METRICS, SUMMARY)
INFERENCE_FILES = (CONFIG, TOKENIZER, WEIGHTS)
LOCK = ".lock"

log = logging.getLogger(__name__)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` while training into it, so two processes never write one run. A
    lock whose process on this host is gone (killed, crashed) is stale and is cleared, together
    with the temporary files its writes may have left."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path, host = run_dir / LOCK, socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # an ordinary file's mode
        except FileExistsError:
            try:
                owner = json.loads(path.read_text(encoding="utf-8"))
                pid, owner_host = int(owner["pid"]), str(owner["host"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, owner_host = -1, host  # torn by a crash between create and write: stale
            if owner_host != host or (pid > 0 and _process_alive(pid)):
                raise UserError(f"{run_dir} is being trained by process {pid} on {owner_host}; wait for it, or "
                                f"delete {path} if that process is gone") from None
            log.warning("cleared a stale lock in %s left by process %d", run_dir, pid)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "host": host}))
        break
    else:  # another process took the cleared lock first
        raise UserError(f"{run_dir} is being trained by another process; wait for it")
    for stale in run_dir.glob(".*.tmp*"):  # ours to remove: no other writer holds the lock
        if stale.name[1:].split(".tmp")[0] in RUN_FILES:
            stale.unlink(missing_ok=True)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in (CONFIG, WEIGHTS, TRAIN_STATE))


def refuse_existing_run(run_dir: Path, overwrite: bool) -> None:
    """Never train over an existing run unless told to (checked before any work is done)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a folder")
    if holds_run(run_dir) and not overwrite:
        raise UserError(f"{run_dir} already holds a run; use --resume to continue it or --overwrite to replace it")


def clear_run(run_dir: Path) -> None:
    """Remove a previous run's own files (anything else in the folder stays) and make the folder."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_run_dir(run_dir: Path, required: tuple[str, ...] = INFERENCE_FILES) -> None:
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    missing = [name for name in required if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"run directory {run_dir} is incomplete: missing {', '.join(missing)}")


def read_config(run_dir: Path) -> RunConfig:
    return load_config(base=_read_config_dict(run_dir))


def _read_config_dict(run_dir: Path) -> dict:
    """The saved config, migrated from older formats; every key must be there."""
    path = run_dir / CONFIG
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a config mapping")
    raw = unversion(raw, path)
    missing = missing_keys(raw)
    if missing:
        raise UserError(f"{path} is missing {', '.join(missing)}; it was not written by lmrnn or was edited")
    return raw


def resume_config(run_dir: Path, overrides: list[str], flags: dict[str, Any]) -> RunConfig:
    """The saved config with `overrides`/`flags` on top; only the stop limits and the device may
    change, since anything else would not continue the same run."""
    check_run_dir(run_dir, (CONFIG, TOKENIZER))
    saved = read_config(run_dir)
    if saved.model.cell == "ngram":
        raise UserError("an n-gram run is counted in one pass and has nothing to resume; count it again with --overwrite")
    check_run_dir(run_dir, (TRAIN_STATE,))
    cfg = load_config(base=_read_config_dict(run_dir), overrides=overrides, flags=flags)
    old, new = flatten(saved), flatten(cfg)
    changed = [key for key in new if new[key] != old[key] and key not in RESUMABLE_KEYS]
    if changed:
        raise UserError(f"--resume continues the run as configured; cannot change {', '.join(changed)} "
                        f"(only {', '.join(sorted(RESUMABLE_KEYS))} may change)")
    return cfg


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write(run_dir / CONFIG, f"format: {FORMAT_VERSION}\n" + config_to_yaml(cfg))


def save_tokenizer(run_dir: Path, tokenizer: Tokenizer) -> None:
    atomic_write(run_dir / TOKENIZER, tokenizer.model_bytes)


def save_weights(run_dir: Path, model: RNNLM, step: int) -> None:
    # save_model (not save_file) handles the tied embedding/decoder matrix, which shares storage
    metadata = {"format": "pt", "step": str(step), "lmrnn_version": __version__}
    write_atomically(run_dir / WEIGHTS, lambda tmp: save_model(model, str(tmp), metadata=metadata))


def save_ngram(run_dir: Path, kn: KneserNey) -> None:
    """An n-gram run's counts go where a network's weights would: model.safetensors."""
    write_atomically(run_dir / WEIGHTS, kn.save)


def load_weights(run_dir: Path, model: RNNLM, device: torch.device) -> None:
    path = run_dir / WEIGHTS
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is truncated, corrupted or does not match config.yaml ({reason})") from None


def save_train_state(run_dir: Path, state: dict) -> None:
    write_atomically(run_dir / TRAIN_STATE, lambda tmp: torch.save(state, tmp))


def load_train_state(run_dir: Path) -> dict:
    """The resumable state. weights_only=True: tensors and plain data only, so a tampered file
    is refused before any of its code could run."""
    path = run_dir / TRAIN_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # weights_only met a function or class: refused before any call
            raise UserError(f"{path} holds objects other than tensors and plain data; refused, since loading "
                            f"them could run code") from None
        raise UserError(f"{path} is truncated or corrupted and cannot be resumed (UnpicklingError)") from None
    except Exception as err:  # torch raises many types for a damaged zip
        raise UserError(f"{path} is truncated or corrupted and cannot be resumed ({type(err).__name__})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "rng", "step"} <= set(state):
        raise UserError(f"{path} is not an lmrnn training state")
    return state


def append_metrics(run_dir: Path, record: dict) -> None:
    try:
        with open(run_dir / METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as err:
        raise UserError(f"cannot write {run_dir / METRICS} ({err.strerror or err})") from None


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the records written after `step` (the resume point), which the resumed run writes
    again, so metrics.jsonl reads as if the run had never stopped."""
    if (run_dir / METRICS).is_file():
        kept = "".join(json.dumps(r) + "\n" for r in read_metrics(run_dir) if r.get("step", 0) <= step)
        if kept != (run_dir / METRICS).read_text(encoding="utf-8"):
            atomic_write(run_dir / METRICS, kept)


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's metrics records, oldest first; a line torn by a crash is skipped."""
    check_run_dir(run_dir, (METRICS,))
    records = []
    for line in (run_dir / METRICS).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict | None:
    """The final figures of a finished run; None while it has none (or a damaged one)."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def check_vocabulary(run_dir: Path, tokenizer: Tokenizer, cfg: RunConfig) -> None:
    """A run's tokenizer.model and config.yaml must agree on the vocabulary size."""
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise UserError(f"{run_dir}: tokenizer.model has {tokenizer.vocab_size} pieces but config.yaml "
                        f"says model.vocab_size={cfg.model.vocab_size}")


def load_run(run_dir: Path, device: torch.device) -> tuple[RNNLM | FeedForwardLM | NgramLM, Tokenizer, RunConfig]:
    """Rebuild the model from config.yaml + model.safetensors, on `device`, in eval mode."""
    check_run_dir(run_dir)
    cfg = read_config(run_dir)
    tokenizer = Tokenizer.load(run_dir / TOKENIZER)
    check_vocabulary(run_dir, tokenizer, cfg)
    if cfg.model.cell == "ngram":
        try:
            kn = KneserNey.load(run_dir / WEIGHTS)
        except (SafetensorError, OSError, ValueError, KeyError) as err:
            raise UserError(f"{run_dir / WEIGHTS} is truncated, corrupted or not an n-gram model ({err})") from None
        return NgramLM(kn).to(device), tokenizer, cfg
    model = build_model(cfg.model)
    load_weights(run_dir, model, torch.device("cpu"))
    model.to(device).eval()
    if isinstance(model, RNNLM):
        model.flatten_parameters()
    return model, tokenizer, cfg
