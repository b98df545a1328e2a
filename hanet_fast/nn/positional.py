"""Vertical positional encoding of HANet's coarse rows (paper §3.1 "Incorporating positional
encoding", Fig. 2e, supplementary Table 9; DESIGN §3).

The table and the way positions are looked up follow the official implementation
(``network/PosEmbedding.py`` of github.com/shachoi/HANet, ``PosEncoding1D`` and
``PosEmbedding1D``) so that its checkpoints load:

- a table of ``rows + 1`` positions x ``dim`` channels; the sinusoidal one is
  ``PE(p, 2i) = sin(p / c^(2i/dim))``, ``PE(p, 2i+1) = cos(p / c^(2i/dim))`` with
  ``c = 10`` when ``dim > 50`` else ``100``, plus 1 everywhere; the learned one starts at zero;
- positions are rows of the *original full image* quantised to ``rows`` levels; the input
  image's positions are resized to ``rows`` entries by nearest interpolation in one step
  (coarse row ``j`` takes image row ``floor(j * H_img / rows)``), whatever the height of the
  feature map the module sees;
- padded rows (a training crop larger than the scaled image) have the pad position ``rows``,
  the table's extra row (official ``IGNORE_POS``); in ``row_pos`` they hold
  :data:`PAD_ROW_POS`;
- in training the positions are jittered by ``trunc(N(0, noise))`` (the official ``// 1`` on
  a float tensor truncated toward zero on torch 1.4), clamped to ``±(rows // 8)`` (official
  ``16 // pos_rfactor`` with ``rows = 128 // pos_rfactor``), then clamped to ``[0, rows]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["POS_ENCODINGS", "PAD_ROW_POS", "ROW_POS_TOLERANCE", "sinusoid_table", "check_row_pos", "full_image_row_pos",
           "coarse_positions", "default_max_jitter", "jitter_positions", "PositionalEncoding1d"]

#: The kinds of positional encoding :class:`PositionalEncoding1d` builds.
POS_ENCODINGS = ("sinusoidal", "learned")

#: Rounding error (in coarse rows) that :func:`coarse_positions` forgives before flooring.
ROW_POS_TOLERANCE = 1e-3

#: The ``row_pos`` of a padded row: one image height below the top, the fraction the official
#: ``IGNORE_POS`` (128 in units of 8 rows of a 1024-row image) stands for. It is the only value
#: outside ``[0, 1)`` that ``row_pos`` may hold, and it maps to table index ``rows``.
PAD_ROW_POS = 1.0


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The official HANet sinusoidal table, 1 added: ``[num_positions, dim]`` float32.

    Column ``j`` of position ``p`` holds ``sin(a)`` for even ``j`` and ``cos(a)`` for odd ``j``
    with ``a = p / c ** (2 * (j // 2) / dim)``, ``c = 10 if dim > 50 else 100``; the whole
    table is then shifted by +1. Rounded as the official code rounds it, bit for bit: the
    angles and their sines in float64 numpy (each power a numpy scalar, the sines over the
    same strided halves of the table), the table rounded to float32 (``torch.FloatTensor``),
    and only then 1 added in float32: two roundings, not one.
    """
    if num_positions < 1 or dim < 1:
        raise ValueError(f"hanet_fast: sinusoid_table needs num_positions >= 1 and dim >= 1, got {num_positions}, {dim}")
    cycle = 10 if dim > 50 else 100
    scale = np.array([np.power(cycle, 2 * (j // 2) / dim) for j in range(dim)])
    table = np.arange(num_positions)[:, None] / scale[None, :]
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    # torch.tensor (not from_numpy) follows a `with torch.device(...)` context, e.g. meta
    return torch.tensor(table).to(torch.float32) + 1


def check_row_pos(row_pos: torch.Tensor, where: str) -> None:
    """Raise ``ValueError`` naming ``row_pos`` unless every value is a fraction in ``[0, 1)`` or
    the pad position :data:`PAD_ROW_POS` (NaN is refused too).

    The check reads the values back to the host, so it is skipped while ``torch.compile``
    traces or a CUDA graph captures (neither can synchronise), and for meta tensors (no
    values); eager calls on real tensors always check.
    """
    if torch.compiler.is_compiling() or row_pos.device.type == "meta":
        return
    if row_pos.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    bad = ~(((row_pos >= 0) & (row_pos < 1)) | (row_pos == PAD_ROW_POS))  # NaN fails every comparison
    if bool(bad.any()):
        first = row_pos[bad].flatten()[0].item()
        raise ValueError(
            f"{where}: row_pos must hold each row's position as a fraction of the full image height in [0, 1), "
            f"or {PAD_ROW_POS} for a padded row; got {first} ({int(bad.sum())} bad values)"
        )


def full_image_row_pos(batch: int, height, device: torch.device | None = None) -> torch.Tensor:
    """The ``row_pos`` of full images: ``arange(height) / height`` in float32, ``[batch, height]``.

    What every ``row_pos=None`` in hanet_fast stands for (the model, the module, ``predict``,
    the exported graphs); the numpy twin of the data pipeline is
    :func:`hanet_fast.data.transforms.full_row_pos` (same values). ``height`` may be symbolic
    (``torch.export``)."""
    rows = torch.arange(height, device=device, dtype=torch.float32) / height
    return rows.expand(batch, height)


def coarse_positions(row_pos: torch.Tensor | None, rows: int, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """The position (table index) of each of the ``rows`` coarse rows: ``[batch, rows]`` int64.

    Args:
        row_pos: ``[batch, H_img]`` float, each row of the network's input image: its vertical
            position in the original full image as a fraction in ``[0, 1)``, or
            :data:`PAD_ROW_POS` for a padded row; or None: the coarse rows are themselves a
            full image (``H_img = rows``, :func:`full_image_row_pos`), so coarse row ``j`` has
            position ``j``. Callers that know a taller image pass its positions instead:
            coarse row ``j`` of a full image of height ``H`` is at ``floor(floor(j * H / rows)
            * rows / H)``, which is ``j`` only when ``j * H`` is a multiple of ``rows``.
        rows: the number of coarse rows (positions ``0 .. rows - 1``, and ``rows`` for padding).
        batch: the batch size (used when ``row_pos`` is None).
        device: where the result lives when ``row_pos`` is None.

    Coarse row ``j`` takes image row ``floor(j * H_img / rows)`` (nearest resizing of the
    ``H_img`` positions straight to ``rows`` entries, in exact integer arithmetic: torch's
    float32 nearest index equals it whenever ``rows`` is a power of two, as in every official
    configuration). That row's position is ``floor(row_pos * rows)`` clamped to
    ``[0, rows - 1]`` (fractions that round up to 1.0 stay in range), or ``rows`` for the pad
    position. The floor allows :data:`ROW_POS_TOLERANCE` coarse rows of rounding error, so that
    fractions computed in floating point from integer pixel rows, ``(top + r) / H_img``, give
    exactly the official integer result ``((top + r) * rows) // H_img``.
    """
    if row_pos is None:  # floor(floor(j * rows / rows) * rows / rows) = j
        return torch.arange(rows, device=device).unsqueeze(0).expand(batch, rows)
    height = row_pos.shape[1]
    picked = row_pos[:, torch.arange(rows, device=row_pos.device) * height // rows]
    pos = torch.floor(picked * rows + ROW_POS_TOLERANCE).clamp(0, rows - 1).long()
    return torch.where(picked == PAD_ROW_POS, rows, pos)


def default_max_jitter(rows: int) -> int:
    """The official jitter clamp ``16 // pos_rfactor`` written in terms of ``rows = 128 // pos_rfactor``."""
    return rows // 8


def jitter_positions(pos: torch.Tensor, noise: float, max_jitter: int, max_pos: int) -> torch.Tensor:
    """Random vertical jitter of positions (training only): ``pos + clamp(trunc(N(0, noise)), ±max_jitter)``,
    clamped to ``[0, max_pos]``.

    The shift is truncated toward zero, as the official ``noise // 1`` was on torch 1.4
    (``floor_divide`` truncated before torch 1.13): with ``noise = 0.5`` 95.4 % of rows keep
    their position and the mean shift is 0. Draws from torch's default generator of ``pos``'s
    device (``torch.manual_seed`` reproduces it) and stays on the device, so it traces under
    ``torch.compile`` without a graph break.
    """
    shift = torch.trunc(torch.randn(pos.shape, device=pos.device) * noise).long()
    return (pos + shift.clamp(-max_jitter, max_jitter)).clamp(0, max_pos)


class PositionalEncoding1d(nn.Module):
    """Adds a vertical positional encoding to a coarse-row feature map ``[B, dim, rows]``.

    Args:
        rows: number of coarse rows; the table has ``rows + 1`` positions: ``0 .. rows - 1``
            for image rows and ``rows`` for padded rows (also reached by the training jitter),
            as in the official code.
        dim: channels of the feature map the encoding is added to.
        kind: ``"sinusoidal"`` (fixed table, a persistent non-trainable buffer ``weight``) or
            ``"learned"`` (a trainable parameter ``weight``, zero-initialised like the official
            ``PosEmbedding1D``).
        noise: standard deviation of the training jitter; 0 disables it.
        max_jitter: the jitter is clamped to ``[-max_jitter, max_jitter]`` positions; None:
            the official ``rows // 8`` (:func:`default_max_jitter`).

    The table is named ``weight`` for both kinds: it is the official ``pos_layer.weight``.
    """

    weight: torch.Tensor

    def __init__(self, rows: int, dim: int, kind: str = "sinusoidal", noise: float = 0.0, max_jitter: int | None = None) -> None:
        super().__init__()
        if kind not in POS_ENCODINGS:
            raise ValueError(f"hanet_fast: kind must be one of {POS_ENCODINGS}, got {kind!r}")
        if noise < 0 or not math.isfinite(noise):
            raise ValueError(f"hanet_fast: noise must be a finite number >= 0, got {noise}")
        self.rows = rows
        self.dim = dim
        self.kind = kind
        self.noise = float(noise)
        self.max_jitter = default_max_jitter(rows) if max_jitter is None else max_jitter
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
