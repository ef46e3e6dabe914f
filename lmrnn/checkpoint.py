"""Everything that reads or writes a run directory.

    config.yaml        resolved config, with the derived model.vocab_size
    tokenizer.model    SentencePiece model (protobuf)
    model.safetensors  weights of the best model on validation
    train_state.pt     plain dict for --resume (weights, optimizer, schedule, step, stream position,
                       hidden state, RNG), loaded with weights_only=True
    metrics.jsonl      one JSON object per log / eval event
    summary.json       final figures

Every file is written to a temporary name and moved into place with os.replace, so an
interrupted write never leaves a torn file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from lmrnn import __version__
from lmrnn.config import RESUMABLE_KEYS, RunConfig, config_to_yaml, flatten, load_config
from lmrnn.errors import UserError
from lmrnn.models import RNNLM
from lmrnn.tokenizer import Tokenizer

CONFIG, TOKENIZER, WEIGHTS = "config.yaml", "tokenizer.model", "model.safetensors"
TRAIN_STATE, METRICS, SUMMARY = "train_state.pt", "metrics.jsonl", "summary.json"
RUN_FILES = (CONFIG, TOKENIZER, WEIGHTS, TRAIN_STATE, METRICS, SUMMARY)
INFERENCE_FILES = (CONFIG, TOKENIZER, WEIGHTS)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: Path, data: bytes | str) -> None:
    tmp = _temporary(path)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


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
    try:
        raw = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {run_dir / CONFIG}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{run_dir / CONFIG} is not a config mapping")
    return raw


def resume_config(run_dir: Path, overrides: list[str], flags: dict[str, Any]) -> RunConfig:
    """The saved config with `overrides`/`flags` on top; only the stop limits and the device may
    change, since anything else would not continue the same run."""
    check_run_dir(run_dir, (CONFIG, TOKENIZER, TRAIN_STATE))
    saved = read_config(run_dir)
    cfg = load_config(base=_read_config_dict(run_dir), overrides=overrides, flags=flags)
    old, new = flatten(saved), flatten(cfg)
    changed = [key for key in new if new[key] != old[key] and key not in RESUMABLE_KEYS]
    if changed:
        raise UserError(f"--resume continues the run as configured; cannot change {', '.join(changed)} "
                        f"(only {', '.join(sorted(RESUMABLE_KEYS))} may change)")
    return cfg


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write(run_dir / CONFIG, config_to_yaml(cfg))


def save_tokenizer(run_dir: Path, tokenizer: Tokenizer) -> None:
    atomic_write(run_dir / TOKENIZER, tokenizer.model_bytes)


def save_weights(run_dir: Path, model: RNNLM, step: int) -> None:
    # save_model (not save_file) handles the tied embedding/decoder matrix, which shares storage
    path = run_dir / WEIGHTS
    tmp = _temporary(path)
    save_model(model, str(tmp), metadata={"format": "pt", "step": str(step), "lmrnn_version": __version__})
    os.replace(tmp, path)


def load_weights(run_dir: Path, model: RNNLM, device: torch.device) -> None:
    path = run_dir / WEIGHTS
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is truncated, corrupted or does not match config.yaml ({reason})") from None


def save_train_state(run_dir: Path, state: dict) -> None:
    path = run_dir / TRAIN_STATE
    tmp = _temporary(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_train_state(run_dir: Path) -> dict:
    path = run_dir / TRAIN_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged zip or pickle
        raise UserError(f"{path} is truncated or corrupted and cannot be resumed ({type(err).__name__})") from None


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


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


def load_run(run_dir: Path, device: torch.device) -> tuple[RNNLM, Tokenizer, RunConfig]:
    """Rebuild the model from config.yaml + model.safetensors, on `device`, in eval mode."""
    check_run_dir(run_dir)
    cfg = read_config(run_dir)
    tokenizer = Tokenizer.load(run_dir / TOKENIZER)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise UserError(f"{run_dir}: tokenizer.model has {tokenizer.vocab_size} pieces but config.yaml "
                        f"says model.vocab_size={cfg.model.vocab_size}")
    model = RNNLM(cfg.model)
    load_weights(run_dir, model, torch.device("cpu"))
    model.to(device).eval()
    model.rnn.flatten_parameters()  # contiguous weights for cuDNN after the move
    return model, tokenizer, cfg
