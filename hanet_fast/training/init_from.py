"""Full-network initialisation from a checkpoint (``--init-from CHECKPOINT``), as the official
``--snapshot`` restores one without ``--restore_optimizer`` (``optimizer.py``'s
``forgiving_state_restore``): every tensor of the network whose name and shape match one in the
checkpoint is loaded; the others keep their initialisation and are listed by name. Nothing else
is taken (no optimiser, scheduler, iteration or random state): it starts a run, it does not
resume one.

The checkpoint is one of ours (``checkpoint.pt`` of a run, or its run folder) or an official HANet
snapshot (``{'state_dict', 'optimizer', 'epoch', 'mean_iu', 'command'}``, ``module.`` keys, or a
bare state dict), whose key names are converted to hanet_fast's
(:func:`hanet_fast.models.read_official_state_dict`) before matching. E.g. the official
Mapillary-pretrained ResNeXt-101 (65 classes, no HANet) into a 19-class network with HANet: the
trunk, ASPP and decoder are carried; the classifier (65 vs 19 outputs), the HANet layers and the
auxiliary head are listed as kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from hanet_fast.inference import _read_checkpoint
from hanet_fast.models.official import read_official_state_dict

__all__ = ["InitReport", "init_from", "read_weights"]


@dataclass
class InitReport:
    """What :func:`init_from` did.

    Attributes:
        path: the file read.
        source: ``"hanet_fast"`` or ``"official"``.
        loaded: network tensors taken from the checkpoint.
        kept: network tensors that kept their initialisation, each ``"name (why)"``: absent from
            the checkpoint, or of another shape.
        unused: checkpoint tensors with no tensor of that name in the network.
    """

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, and every kept tensor by name."""
        total = len(self.loaded) + len(self.kept)
        line = f"init from {self.path} ({self.source}): loaded {len(self.loaded)} of {total} tensors"
        if self.kept:
            line += f"; kept the initialisation of {len(self.kept)}: {', '.join(self.kept)}"
        if self.unused:
            line += f"; {len(self.unused)} checkpoint tensors have no counterpart"
        return line


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str, str]:
    """``(state dict in hanet_fast's names, source, file)`` of a checkpoint of ours or an official one.

    Raises:
        FileNotFoundError: no such file (or no ``checkpoint.pt`` in the folder), naming it.
        ValueError: a file that cannot be read or holds no state dict (names the file).
    """
    file = os.fspath(path)
    if os.path.isdir(file):
        file = os.path.join(file, "checkpoint.pt")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"hanet_fast.training: checkpoint not found: {file}")
    obj = _read_checkpoint(file)  # None: an official snapshot holding numpy scalars
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return dict(obj["model"]), "hanet_fast", file
    try:
        return read_official_state_dict(file if obj is None else obj), "official", file
    except ValueError as e:
        raise ValueError(f"hanet_fast.training: {file} is neither a hanet_fast checkpoint nor an official HANet "
                         f"snapshot: {str(e).removeprefix('hanet_fast.models: ')}") from None


def init_from(model: nn.Module, path: str | os.PathLike) -> InitReport:
    """Load into ``model`` every tensor of the checkpoint at ``path`` whose name and shape match.

    Args:
        model: the (unwrapped) network, already initialised; its tensors that the checkpoint
            does not match keep their values.
        path: see :func:`read_weights`.

    Returns:
        The :class:`InitReport` (``report.summary()`` is the line to print).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_weights`; ValueError also when no tensor
            matches (another architecture: nothing would be initialised from it).
    """
    source_state, source, file = read_weights(path)
    report = InitReport(file, source)
    merged = {}
    for name, own in model.state_dict().items():
        theirs = source_state.get(name)
        if theirs is None:
            report.kept.append(f"{name} (absent)")
        elif tuple(theirs.shape) != tuple(own.shape):
            report.kept.append(f"{name} ({list(theirs.shape)} in the checkpoint, {list(own.shape)} here)")
        else:
            merged[name] = theirs
            report.loaded.append(name)
    own_names = set(model.state_dict())
    report.unused = [name for name in source_state if name not in own_names]
    if not merged:
        raise ValueError(f"hanet_fast.training: no tensor of {file} matches the network by name and shape; "
                         f"is it a checkpoint of this kind of network?")
    model.load_state_dict(merged, strict=False)
    return report
