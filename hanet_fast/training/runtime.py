"""Where a run executes: its process (rank, world size), device, process group, CPU threads and
the RNG states a checkpoint records so that a resume continues exactly."""

from __future__ import annotations

import dataclasses
import datetime
import os
import warnings

import torch
import torch.distributed as dist

from hanet_fast._cli import resolve_device
from hanet_fast.training.errors import RunError

__all__ = ["Process", "current_process", "run_device", "init_process_group", "set_threads", "rng_state",
           "set_rng_state"]


@dataclasses.dataclass(frozen=True)
class Process:
    """This process's place in a (torchrun) run: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes the run folder."""
        return self.rank == 0


def current_process() -> Process:
    """The process as torchrun describes it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process without it."""
    env = os.environ
    return Process(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


def run_device(text: str, local_rank: int) -> torch.device:
    """The device ``--device`` names; a bare ``cuda`` is this process's GPU (``cuda:<local rank>``)."""
    try:
        dev = resolve_device(text)
    except ValueError as e:
        raise RunError(str(e)) from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_process_group(process: Process, device: torch.device) -> bool:
    """Join torchrun's process group (NCCL on GPU, gloo on CPU) unless it is one process or the
    group exists; selects the GPU. Returns whether this call created the group."""
    created = False
    if process.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
        created = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return created


def set_threads(threads: int, saved: int | None, keep_saved: bool, main: bool) -> None:
    """``threads`` torch CPU threads (0: torch's default); ``keep_saved``: a resume without
    ``--threads`` takes the run's ``saved`` count, since the thread count changes CPU reductions in
    the last bits. Warns (rank 0) when a resume runs on another count than the run did."""
    if threads:
        torch.set_num_threads(threads)
    elif saved and keep_saved:
        torch.set_num_threads(int(saved))
    if saved and torch.get_num_threads() != saved and main:
        warnings.warn(f"hanet_fast.train: resuming with {torch.get_num_threads()} threads where the run used "
                      f"{saved}: CPU results may differ in the last bits from an uninterrupted run")


def rng_state() -> dict:
    """This process's torch (and CUDA) RNG states."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
