"""Neural-network modules of hanet_fast: the HANet module (DESIGN §3) and its positional encoding."""

from hanet_fast.nn.hanet import HANet
from hanet_fast.nn.positional import (
    POS_ENCODINGS,
    PositionalEncoding1d,
    coarse_positions,
    jitter_positions,
    sinusoid_table,
)

__all__ = [
    "HANet",
    "PositionalEncoding1d",
    "POS_ENCODINGS",
    "sinusoid_table",
    "coarse_positions",
    "jitter_positions",
]
