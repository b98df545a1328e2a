"""The HANet module (paper §3.1, Fig. 2 and 8, Tables 3 and 9; DESIGN §3).

It mirrors ``HANet_Conv`` of the official code (``network/HANet.py`` of
github.com/shachoi/HANet) step by step, with the two memory-bound steps done by the fused
ops :func:`hanet_fast.ops.height_pool` and :func:`hanet_fast.ops.height_gate`.
Official checkpoints map onto it by renaming prefixes: ``attention_first`` -> ``conv1``,
``attention_second`` -> ``conv2``, ``attention_third`` -> ``conv3``,
``pos_emb1d_1st.pos_layer`` / ``pos_emb1d_2nd.pos_layer`` -> ``pos_encoding``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from hanet_fast.ops import BACKENDS, height_gate, height_pool
from hanet_fast.ops.backends import check_default_backend
from hanet_fast.nn.positional import POS_ENCODINGS, PositionalEncoding1d, check_row_pos, full_image_row_pos

__all__ = ["HANet"]

POOLINGS = ("avg", "max")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"hanet_fast.nn.HANet: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"hanet_fast.nn.HANet: {name} must be >= 1, got {value}")


def _check_number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"hanet_fast.nn.HANet: {name} must be a finite number, got {value!r}")


class HANet(nn.Module):
    """Height-driven attention: gates ``x_high`` row by row with an attention map computed from
    a width-pooled, coarse view of ``x_low``.

    Pipeline (``R = rows``, ``C_mid = ceil(in_channels / reduction)``)::

        z    = height_pool(x_low, R, pooling)                 [B, in_channels, R]
        z    = z + PE        (pos_injection == 1)
        z    = Dropout1d(z)  (channel-wise; absent when dropout == 0)
        q1   = ReLU(BN(Conv1d_1x1(z)))                          [B, C_mid, R]     conv1
        q1   = q1 + PE       (pos_injection == 2)
        num_convs == 3:
          q2 = ReLU(BN(Conv1d_k3(q1)))                          [B, 2*C_mid, R]   conv2
          a  = Conv1d_k(q2)                                     [B, out_channels, R] conv3
        num_convs == 2:
          a  = Conv1d_k(q1)                                     [B, out_channels, R] conv2
        attn = sigmoid(a)
        out  = height_gate(x_high, attn) = x_high * linear_upsample(attn, H_high)[..., None]

    Args:
        in_channels: channels of ``x_low``.
        out_channels: channels of ``x_high`` (and of the attention map).
        rows: number of coarse rows ``Ĥ`` of the attention map (paper default 16).
        reduction: channel reduction ratio ``r`` of the first 1x1 convolution.
        kernel_size: kernel of the last convolution (odd; padded to keep ``rows``).
        num_convs: 2 or 3 one-dimensional convolution layers.
        pooling: width-wise pooling, ``"avg"`` or ``"max"``.
        dropout: channel-wise dropout probability on the pooled features, in ``[0, 1)``.
        pos_encoding: ``"sinusoidal"``, ``"learned"`` or None (no positional encoding).
        pos_injection: add the encoding to the input of conv1 (1) or to its output (2).
        pos_noise: standard deviation of the training-time position jitter (0 disables it).
        backend: the ops backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"``, ``"triton"``.

    Parameters are initialised as the official code does (``reset_parameters``): Kaiming-normal
    convolution weights, zero biases, unit BN scales, zero learned positional table.

    Graph capture: ``torch.compile``, ``torch.export`` and ``torch.jit.trace`` are supported;
    ``torch.jit.script`` is not (it raises, see :meth:`__prepare_scriptable__`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rows: int = 16,
        reduction: int = 32,
        kernel_size: int = 3,
        num_convs: int = 3,
        pooling: str = "avg",
        dropout: float = 0.1,
        pos_encoding: str | None = "sinusoidal",
        pos_injection: int = 2,
        pos_noise: float = 0.5,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_settings(in_channels, out_channels, rows, reduction, kernel_size, num_convs, pooling, dropout,
                        pos_encoding, pos_injection, pos_noise, backend)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rows = rows
        self.reduction = reduction
        self.kernel_size = kernel_size
        self.num_convs = num_convs
        self.pooling = pooling
        self.pos_injection = pos_injection
        self.backend = backend
        mid = math.ceil(in_channels / reduction)
        self.mid_channels = mid

        self.dropout = nn.Dropout1d(dropout) if dropout > 0 else None
        self.conv1 = nn.Sequential(
            nn.Conv1d(in_channels, mid, kernel_size=1, bias=False), nn.BatchNorm1d(mid), nn.ReLU(inplace=True)
        )
        last = nn.Conv1d(
            mid if num_convs == 2 else 2 * mid, out_channels, kernel_size, padding=kernel_size // 2, bias=True
        )
        if num_convs == 3:
            self.conv2 = nn.Sequential(
                nn.Conv1d(mid, 2 * mid, kernel_size=3, padding=1, bias=True),
                nn.BatchNorm1d(2 * mid),
                nn.ReLU(inplace=True),
            )
            self.conv3 = nn.Sequential(last)
        else:
            self.conv2 = nn.Sequential(last)
            self.conv3 = None
        if pos_encoding is None:
            self.pos_encoding = None
        else:
            dim = in_channels if pos_injection == 1 else mid
            self.pos_encoding = PositionalEncoding1d(rows, dim, pos_encoding, noise=pos_noise)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation (``network/mynn.py: initialize_weights``, ``initialize_embedding``):
        Kaiming-normal (ReLU gain, fan-in) conv weights, zero biases, BN scale 1 / shift 0 and fresh
        running statistics, zero learned positional table."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm1d):
                module.reset_parameters()
        if self.pos_encoding is not None:
            self.pos_encoding.reset_parameters()

    def _check_inputs(self, x_low: torch.Tensor, x_high: torch.Tensor, row_pos: torch.Tensor | None,
                      check_values: bool) -> None:
        for name, x, channels, what in (
            ("x_low", x_low, self.in_channels, "in_channels"),
            ("x_high", x_high, self.out_channels, "out_channels"),
        ):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"hanet_fast.nn.HANet: {name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 4:
                raise ValueError(
                    f"hanet_fast.nn.HANet: {name} must be a 4-D tensor [B, C, H, W], got shape {tuple(x.shape)}"
                )
            if not x.is_floating_point():
                raise TypeError(f"hanet_fast.nn.HANet: {name} must have a floating-point dtype, got {x.dtype}")
            if x.shape[1] != channels:
                raise ValueError(
                    f"hanet_fast.nn.HANet: {name} must have {what}={channels} channels, got shape {tuple(x.shape)}"
                )
        if x_high.shape[0] != x_low.shape[0]:
            raise ValueError(
                f"hanet_fast.nn.HANet: x_high must have x_low's batch size {x_low.shape[0]}, got {x_high.shape[0]}"
            )
        if x_high.device != x_low.device:
            raise ValueError(f"hanet_fast.nn.HANet: x_high is on {x_high.device} but x_low is on {x_low.device}")
        if row_pos is not None:
            if not isinstance(row_pos, torch.Tensor):
                raise TypeError(f"hanet_fast.nn.HANet: row_pos must be a torch.Tensor or None, got {type(row_pos).__name__}")
            if row_pos.dim() != 2 or row_pos.shape[0] != x_low.shape[0] or row_pos.shape[1] < 1:
                raise ValueError(
                    f"hanet_fast.nn.HANet: row_pos must have shape [B, H_img] with B = {x_low.shape[0]} "
                    f"(one position per row of the network's input image), got {tuple(row_pos.shape)}"
                )
            if not row_pos.is_floating_point():
                raise TypeError(
                    f"hanet_fast.nn.HANet: row_pos must be floating point (fractions of the image height in [0, 1)), "
                    f"got {row_pos.dtype}"
                )
            if row_pos.device != x_low.device:
                raise ValueError(f"hanet_fast.nn.HANet: row_pos is on {row_pos.device} but x_low is on {x_low.device}")
            if check_values:
                check_row_pos(row_pos, "hanet_fast.nn.HANet")

    def attention(self, x_low: torch.Tensor, row_pos: torch.Tensor | None = None) -> torch.Tensor:
        """The coarse attention ``sigmoid(a)``: ``[B, out_channels, rows]`` (inputs not checked).

        ``row_pos`` None: ``x_low`` spans a full image (:func:`full_image_row_pos` of its height)."""
        if self.pos_encoding is not None and row_pos is None:
            row_pos = full_image_row_pos(x_low.shape[0], x_low.shape[2], x_low.device)
        z = height_pool(x_low, self.rows, self.pooling, backend=self.backend)
        if self.pos_encoding is not None and self.pos_injection == 1:
            z = self.pos_encoding(z, row_pos)
        if self.dropout is not None:
            z = self.dropout(z)
        q = self.conv1(z)
        if self.pos_encoding is not None and self.pos_injection == 2:
            q = self.pos_encoding(q, row_pos)
        a = self.conv2(q)
        if self.conv3 is not None:
            a = self.conv3(a)
        return torch.sigmoid(a)

    def forward(
        self,
        x_low: torch.Tensor,
        x_high: torch.Tensor,
        row_pos: torch.Tensor | None = None,
        return_attention: bool = False,
        *,
        row_pos_checked: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Gate ``x_high`` with the height-driven attention computed from ``x_low``.

        Args:
            x_low: ``[B, in_channels, H_low, W_low]``, the feature map the attention is computed from.
            x_high: ``[B, out_channels, H_high, W_high]``, the feature map that is gated; any
                height (the attention is linearly upsampled from ``rows`` to ``H_high``).
            row_pos: optional ``[B, H_img]`` float, one entry per row of the network's *input
                image* (any ``H_img``, independent of ``x_low``'s height): that row's vertical
                position in the original full image as a fraction in ``[0, 1)`` (for rows
                ``top .. top + H_img`` of a full image of height ``H_full``:
                ``(top + arange(H_img)) / H_full``), or ``hanet_fast.nn.PAD_ROW_POS`` (1.0) for a padded row.
                Coarse row ``j`` takes the position of image row ``floor(j * H_img / rows)``.
                None means ``x_low`` spans a full image: exactly the positions
                ``arange(H_low) / H_low`` of its height ``H_low`` (a model that knows the
                image's height passes that image's positions, as
                :class:`~hanet_fast.models.DeepLabV3PlusHANet` does).
                Only used with a positional encoding. NaN, negative or other values above 1
                raise ``ValueError``.
            return_attention: also return the coarse attention.
            row_pos_checked: the caller has already checked ``row_pos``'s values (as
                :class:`~hanet_fast.models.DeepLabV3PlusHANet` does once for all its layers),
                so this layer skips the check and its read-back to the host. Shapes, dtype and
                device are checked either way.

        Returns:
            The gated ``x_high`` (in ``x_high``'s dtype and memory format), or
            ``(gated, attn)`` with ``attn`` the coarse attention ``[B, out_channels, rows]``
            when ``return_attention`` is True.
        """
        self._check_inputs(x_low, x_high, row_pos, check_values=not row_pos_checked)
        attn = self.attention(x_low, row_pos)
        out = height_gate(x_high, attn.to(x_high.dtype), backend=self.backend)
        if return_attention:
            return out, attn
        return out

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, rows={self.rows}, "
            f"reduction={self.reduction}, kernel_size={self.kernel_size}, num_convs={self.num_convs}, "
            f"pooling={self.pooling!r}, pos_injection={self.pos_injection}, backend={self.backend!r}"
        )

    def __prepare_scriptable__(self) -> "HANet":
        """Refuses ``torch.jit.script`` (of this module or of a model holding it) with a clear error.

        TorchScript would have to compile the ops' Python layer (argument checks, backend
        choice, autograd registration), which it cannot express, and it is deprecated in
        torch 2.x; ``torch.jit.trace``, ``torch.export`` and ``torch.compile`` capture the
        fused ops as they are.
        """
        raise RuntimeError(
            "hanet_fast.nn.HANet does not support torch.jit.script; capture it with torch.export.export, "
            "torch.jit.trace or torch.compile instead"
        )


def _check_settings(in_channels: int, out_channels: int, rows: int, reduction: int, kernel_size: int, num_convs: int,
                    pooling: str, dropout: float, pos_encoding: str | None, pos_injection: int, pos_noise: float,
                    backend: str) -> None:
    """ValueError naming the first of :class:`HANet`'s arguments that is out of range."""
    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("rows", rows),
        ("reduction", reduction),
        ("kernel_size", kernel_size),
    ):
        _check_positive_int(name, value)
    if kernel_size % 2 != 1:
        raise ValueError(f"hanet_fast.nn.HANet: kernel_size must be odd to keep the rows, got {kernel_size}")
    if isinstance(num_convs, bool) or not isinstance(num_convs, int) or num_convs not in (2, 3):
        raise ValueError(f"hanet_fast.nn.HANet: num_convs must be 2 or 3, got {num_convs!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"hanet_fast.nn.HANet: pooling must be one of {POOLINGS}, got {pooling!r}")
    _check_number("dropout", dropout)
    if not 0 <= dropout < 1:
        raise ValueError(f"hanet_fast.nn.HANet: dropout must be in [0, 1), got {dropout}")
    if pos_encoding is not None and pos_encoding not in POS_ENCODINGS:
        raise ValueError(
            f"hanet_fast.nn.HANet: pos_encoding must be one of {POS_ENCODINGS} or None, got {pos_encoding!r}"
        )
    if isinstance(pos_injection, bool) or not isinstance(pos_injection, int) or pos_injection not in (1, 2):
        raise ValueError(f"hanet_fast.nn.HANet: pos_injection must be 1 or 2, got {pos_injection!r}")
    _check_number("pos_noise", pos_noise)
    if pos_noise < 0:
        raise ValueError(f"hanet_fast.nn.HANet: pos_noise must be >= 0, got {pos_noise}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"hanet_fast.nn.HANet: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        check_default_backend()  # a bad HANET_FAST_BACKEND fails here, where the module is built
