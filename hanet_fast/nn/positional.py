"""Vertical positional encoding of HANet's coarse rows (paper §3.1 "Incorporating positional
encoding", Fig. 2e, supplementary Table 9; DESIGN §3).

The table and the way positions are looked up follow the official implementation
(``network/PosEmbedding.py`` of github.com/shachoi/HANet, ``PosEncoding1D`` and
``PosEmbedding1D``) so that its checkpoints load:

- a table of ``rows + 1`` positions x ``dim`` channels; the sinusoidal one is
  ``PE(p, 2i) = sin(p / c^(2i/dim))``, ``PE(p, 2i+1) = cos(p / c^(2i/dim))`` with
  ``c = 10`` when ``dim > 50`` else ``100``, plus 1 everywhere; the learned one starts at zero;
- positions are rows of the *original full image* quantised to ``rows`` levels, resized to
  ``rows`` entries by nearest interpolation, and in training jittered by
  ``floor(N(0, noise))`` clamped to ``±max_jitter`` and then to ``[0, rows]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["POS_ENCODINGS", "ROW_POS_TOLERANCE", "sinusoid_table", "coarse_positions", "jitter_positions", "PositionalEncoding1d"]

#: The kinds of positional encoding :class:`PositionalEncoding1d` builds.
POS_ENCODINGS = ("sinusoidal", "learned")

#: Rounding error (in coarse rows) that :func:`coarse_positions` forgives before flooring.
ROW_POS_TOLERANCE = 1e-3


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The official HANet sinusoidal table, 1 added: ``[num_positions, dim]`` float32.

    Column ``j`` of position ``p`` holds ``sin(a)`` for even ``j`` and ``cos(a)`` for odd ``j``
    with ``a = p / c ** (2 * (j // 2) / dim)``, ``c = 10 if dim > 50 else 100``; the whole
    table is then shifted by +1. Computed in float64 (as the official numpy code does) and
    rounded to float32 once.
    """
    if num_positions < 1 or dim < 1:
        raise ValueError(f"hanet_fast: sinusoid_table needs num_positions >= 1 and dim >= 1, got {num_positions}, {dim}")
    cycle = 10.0 if dim > 50 else 100.0
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = (2 * (torch.arange(dim) // 2)).to(torch.float64) / dim
    angle = position / torch.pow(torch.tensor(cycle, dtype=torch.float64), exponent)[None, :]
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return (table + 1.0).to(torch.float32)


def coarse_positions(row_pos: torch.Tensor | None, rows: int, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """The position (table index) of each of the ``rows`` coarse rows: ``[batch, rows]`` int64.

    Args:
        row_pos: ``[batch, H_in]`` float, each input row's vertical position in the original
            full image as a fraction in ``[0, 1)``; or None, meaning the input *is* the full
            image, so coarse row ``j`` has position ``j``.
        rows: the number of coarse rows (and of positions, ``0 .. rows - 1``).
        batch: the batch size (used when ``row_pos`` is None).
        device: where the result lives when ``row_pos`` is None.

    Each input row's position is ``floor(row_pos * rows)`` clamped to ``[0, rows - 1]`` (so
    values that round up to 1.0 stay in range), then the ``H_in`` positions are resized to
    ``rows`` by nearest interpolation (``F.interpolate(mode="nearest")``), as the official code
    does. The floor allows :data:`ROW_POS_TOLERANCE` coarse rows of rounding error, so that
    fractions computed in floating point from integer pixel rows, ``(top + r) / H_img``, give
    exactly the official integer result ``((top + r) * rows) // H_img``.

    Nearest resizing picks input row ``floor(j * H_in / rows)`` for coarse row ``j``; when
    ``H_in`` is a multiple of ``rows``, a ``row_pos`` of the full image (``arange(H_in) / H_in``)
    therefore gives position ``j``, the same as ``row_pos=None``; for other ``H_in`` the
    official rule gives slightly smaller positions for some rows.
    """
    if row_pos is None:
        return torch.arange(rows, device=device).unsqueeze(0).expand(batch, rows)
    pos = torch.floor(row_pos * rows + ROW_POS_TOLERANCE).clamp(0, rows - 1)
    return F.interpolate(pos.float().unsqueeze(1), size=rows, mode="nearest").squeeze(1).long()


def jitter_positions(pos: torch.Tensor, noise: float, max_jitter: int, max_pos: int) -> torch.Tensor:
    """Random vertical jitter of positions (training only): ``pos + clamp(floor(N(0, noise)), ±max_jitter)``,
    clamped to ``[0, max_pos]``.

    Draws from torch's default generator of ``pos``'s device (``torch.manual_seed`` reproduces
    it) and stays on the device, so it traces under ``torch.compile`` without a graph break.
    """
    shift = torch.floor(torch.randn(pos.shape, device=pos.device) * noise).long()
    return (pos + shift.clamp(-max_jitter, max_jitter)).clamp(0, max_pos)


class PositionalEncoding1d(nn.Module):
    """Adds a vertical positional encoding to a coarse-row feature map ``[B, dim, rows]``.

    Args:
        rows: number of coarse rows; the table has ``rows + 1`` positions (``0 .. rows``; the
            last one is reachable only through the training jitter, as in the official code).
        dim: channels of the feature map the encoding is added to.
        kind: ``"sinusoidal"`` (fixed table, a persistent non-trainable buffer ``weight``) or
            ``"learned"`` (a trainable parameter ``weight``, zero-initialised like the official
            ``PosEmbedding1D``).
        noise: standard deviation of the training jitter; 0 disables it.
        max_jitter: the jitter is clamped to ``[-max_jitter, max_jitter]`` positions.

    The table is named ``weight`` for both kinds: it is the official ``pos_layer.weight``.
    """

    weight: torch.Tensor

    def __init__(self, rows: int, dim: int, kind: str = "sinusoidal", noise: float = 0.0, max_jitter: int = 2) -> None:
        super().__init__()
        if kind not in POS_ENCODINGS:
            raise ValueError(f"hanet_fast: kind must be one of {POS_ENCODINGS}, got {kind!r}")
        if noise < 0 or not math.isfinite(noise):
            raise ValueError(f"hanet_fast: noise must be a finite number >= 0, got {noise}")
        self.rows = rows
        self.dim = dim
        self.kind = kind
        self.noise = float(noise)
        self.max_jitter = max_jitter
        if kind == "sinusoidal":
            self.register_buffer("weight", sinusoid_table(rows + 1, dim), persistent=True)
        else:
            self.weight = nn.Parameter(torch.zeros(rows + 1, dim))

    def reset_parameters(self) -> None:
        """Zero the learned table (official init); the sinusoidal table is recomputed."""
        with torch.no_grad():
            if self.kind == "learned":
                self.weight.zero_()
            else:
                self.weight.copy_(sinusoid_table(self.rows + 1, self.dim))

    def positions(self, batch: int, row_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Table indices ``[batch, rows]`` (int64) of the coarse rows, jittered when training.

        See :func:`coarse_positions` for ``row_pos`` and :func:`jitter_positions` for the jitter.
        """
        pos = coarse_positions(row_pos, self.rows, batch, self.weight.device)
        if self.training and self.noise > 0:
            pos = jitter_positions(pos, self.noise, self.max_jitter, self.rows)
        return pos

    def encoding(self, batch: int, row_pos: torch.Tensor | None = None) -> torch.Tensor:
        """The encoding ``[batch, dim, rows]`` that :meth:`forward` adds (table rows looked up by position)."""
        return F.embedding(self.positions(batch, row_pos), self.weight).transpose(1, 2)

    def forward(self, x: torch.Tensor, row_pos: torch.Tensor | None = None) -> torch.Tensor:
        """``x + encoding``: ``x`` is ``[B, dim, rows]``; the result has ``x``'s dtype."""
        return x + self.encoding(x.shape[0], row_pos).to(x.dtype)

    def extra_repr(self) -> str:
        return f"rows={self.rows}, dim={self.dim}, kind={self.kind!r}, noise={self.noise}, max_jitter={self.max_jitter}"
