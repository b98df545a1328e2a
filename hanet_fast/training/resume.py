"""``--resume``: a run continues from its checkpoint with the checkpoint's settings. Flags that
would change the run are refused; those that leave its weights as they are (:data:`RESUME_MUTABLE`)
may differ, and :data:`RESUME_FRESH` belong to each invocation."""

from __future__ import annotations

import dataclasses
import json
import os

from hanet_fast.training import checkpoint as ckpt_io
from hanet_fast.training.config import ConfigError, TrainConfig
from hanet_fast.training.errors import RunError
from hanet_fast.training.presets import PRESETS
from hanet_fast.training.runtime import set_rng_state

__all__ = ["RESUME_MUTABLE", "RESUME_FRESH", "flag", "load_checkpoint", "run_folder_of", "resumed_config", "restore"]

# Settings a resumed run may change because they leave its weights as they are: taken from the
# command line where given there, else from the checkpoint. --iters may grow (the poly schedule
# then decays towards the new end); --data-root may follow data that moved. Any other flag given
# with --resume that differs from the checkpoint is refused.
RESUME_MUTABLE = ("iters", "workers", "no_progress", "cache_dir", "threads", "log_every", "val_every", "ckpt_every",
                  "num_vis", "deterministic", "data_root", "compile")
# Settings of one invocation, never taken from the checkpoint.
RESUME_FRESH = ("out", "resume", "overwrite", "stop_after", "device")
_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def flag(field: str) -> str:
    """The command-line flag of a :class:`TrainConfig` field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


def load_checkpoint(path: str) -> dict:
    """The training checkpoint ``path`` (a file or run folder) names; RunError naming it otherwise
    (also when its iteration or settings are not what a training run writes)."""
    try:
        state = ckpt_io.load_training(path)
    except ckpt_io.CheckpointError as e:
        raise RunError(f"--resume: {e}") from None
    iteration = state["iteration"]
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise RunError(f"--resume {path}: the checkpoint's iteration {iteration!r} is not a count of iterations")
    if not isinstance(state["args"], dict):
        raise RunError(f"--resume {path}: the checkpoint's settings ('args') are not a dictionary")
    return state


def run_folder_of(path: str) -> str:
    """The run folder of a ``--resume`` path (the checkpoint's folder, or the folder itself)."""
    return os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else path


def _plain(value):  # tuples and lists, as saved in JSON-like form, compare equal
    return json.loads(json.dumps(value, default=str))


def _saved_settings(saved: dict) -> dict:
    """Every setting of the checkpoint's run; one the run's code did not have yet ran at its
    default (the run's preset's, else :class:`TrainConfig`'s), not at this invocation's value."""
    preset = PRESETS.get(saved.get("preset"), {})
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {key: saved[key] if key in saved else preset.get(key, defaults[key]) for key in _FIELDS}


def resumed_config(cfg: TrainConfig, saved: dict, iteration: int, given: set[str] | None) -> tuple[TrainConfig, list[str]]:
    """The configuration that continues the run whose checkpoint holds settings ``saved``: the
    checkpoint's, with ``cfg``'s :data:`RESUME_FRESH` settings and the :data:`RESUME_MUTABLE`
    ones named in ``given`` (all of them when None). Returns it and a description of each setting
    that changed (for the log).

    Raises:
        RunError: ``given`` names a setting that would change the run, ``--iters`` is below the
            checkpoint's iteration, or the checkpoint's settings are not valid ones.
    """
    settings = _saved_settings(saved)
    explicit = set(RESUME_MUTABLE) if given is None else set(given) & set(_FIELDS)
    changing = [f"{flag(k)} {getattr(cfg, k)} (the run's: {settings[k]})" for k in sorted(explicit)
                if k not in RESUME_MUTABLE and k not in RESUME_FRESH and _plain(getattr(cfg, k)) != _plain(settings[k])]
    if changing:
        raise RunError(f"--resume continues a run with its own settings; these flags would change it: "
                       f"{', '.join(changing)}. Leave them out, or start a new run with --out")
    changed = []
    for key in RESUME_MUTABLE:
        if key in explicit:
            if key in saved and _plain(getattr(cfg, key)) != _plain(saved[key]):
                changed.append(f"{flag(key)} {getattr(cfg, key)} (was {saved[key]})")
            settings[key] = getattr(cfg, key)
    for key in RESUME_FRESH:
        settings[key] = getattr(cfg, key)
    try:
        resumed = TrainConfig(**settings)
    except (ConfigError, TypeError) as e:
        text = e.text(flag) if isinstance(e, ConfigError) else str(e)
        raise RunError(f"--resume {cfg.resume}: the checkpoint's settings are not valid: {text}") from None
    if resumed.iters < iteration:
        raise RunError(f"--iters {resumed.iters} is below the checkpoint's iteration {iteration}")
    return resumed, changed


def restore(state: dict, net, optimizer, scheduler, scaler, rank: int) -> int:
    """Load a checkpoint's model, optimizer, scheduler, AMP scaler and this rank's RNG states;
    returns the iteration to continue from.

    Raises:
        RunError: a part of the checkpoint does not fit (named).
    """
    part = "model"
    try:
        net.load_state_dict(state["model"])
        part = "optimizer"
        optimizer.load_state_dict(state["optimizer"])
        part = "scheduler"
        scheduler.load_state_dict(state["scheduler"])
        part = "scaler"
        if "scaler" in state and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        part = "rng"
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        set_rng_state(per_rank[rank] if rank < len(per_rank) else state["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunError(f"--resume: the checkpoint's {part!r} state does not fit this run ({type(e).__name__}: "
                       f"{first})") from None
    return int(state["iteration"])
