"""Where and how tensors run: device choice, seeding, mixed precision, RNG snapshots, the ranks
of a distributed (torchrun) run, and the stop signals a run obeys."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from lmrnn.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for, but no CUDA GPU is available (try device=auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps was asked for, but MPS is not available (try device=auto)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA GPUs that support it (`auto`), or when asked; fp16 when asked (with
    a gradient scaler in training: its exponent range is small); else full fp32. bf16 keeps
    fp32's exponent range, so it needs no loss scaling."""
    if precision == "fp32" or device.type != "cuda":
        if precision in ("bf16", "fp16") and device.type != "cuda":
            raise UserError(f"train.precision={precision} needs a CUDA device; use auto or fp32")
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds this process has used, all its threads; busy CPU seconds of the whole
    machine, every core and process, from /proc/stat, or NaN where there is none). Their
    difference over a run is the CPU time other work took from its cores."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
        machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        machine = float("nan")
    return time.process_time(), machine


def rng_state() -> dict:
    """The RNGs a training step draws from (dropout): plain tensors, weights-only loadable."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes that torchrun started: rank `rank` of
    `size`, `local_rank` on its machine, in a process group (`joined`; torchrun with one process
    joins a group of one). Without torchrun: rank 0 of 1, and every collective is a no-op."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    joined: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's equal share of the B training streams."""
        if batch_size % self.size:
            raise UserError(f"train.batch_size={batch_size} does not split evenly over {self.size} processes; "
                            f"make it a multiple of {self.size}")
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `tensor` over all ranks (in place)."""
        if self.joined:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' equal shares of a state (L, B/size, ...) as the whole (L, B, ...), in rank order."""
        if not self.joined:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=1)

    def gather_objects(self, value) -> list:
        """Every rank's `value` (small, picklable), in rank order."""
        if not self.joined:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def broadcast_objects(self, value):
        """Rank 0's `value` on every rank (other ranks pass anything)."""
        if not self.joined:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers copied into every rank's `module`."""
        if self.joined:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.joined:
            dist.barrier()


def start_ranks(device_name: str) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR in the
    environment) on NCCL for CUDA, gloo for the CPU; each rank takes the GPU of its local rank.
    Without torchrun: rank 0 of 1 and `resolve_device`'s choice."""
    device = resolve_device(device_name)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")), True)
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {ranks.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                            f"start at most that many processes per machine (--nproc_per_node)")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"distributed training runs on CUDA (NCCL) or the CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.size)
    return ranks, device


def stop_ranks(ranks: Ranks) -> None:
    if ranks.joined and dist.is_initialized():
        dist.barrier()  # no rank leaves while another still talks to it
        dist.destroy_process_group()


# a stop signal -> the summary's stopped_by -> the exit code (the shell's 128 + signal)
STOP_SIGNALS = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminate"}
STOP_EXIT_CODES = {"interrupt": 130, "terminate": 143}


class DeferredStop:
    """Ctrl-C (SIGINT) or SIGTERM asks a loop to stop after the current step (its state then saves
    cleanly and --resume continues exactly); a second signal aborts at once. `asked` is the
    first signal's name in STOP_SIGNALS. `report.line` says so on the terminal."""

    def __init__(self, report):
        self.report, self.asked, self.previous = report, None, {}

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = STOP_SIGNALS[signum]
        self.report.line(f"{signal.Signals(signum).name}: stopping after this step and saving (again to abort)")

    def __enter__(self) -> "DeferredStop":
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
