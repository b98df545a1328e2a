"""Neural-network modules of hanet_fast: the HANet module (DESIGN §3) and its positional encoding."""

from hanet_fast.nn.hanet import HANet
from hanet_fast.nn.positional import (
    PAD_ROW_POS,
    POS_ENCODINGS,
    PositionalEncoding1d,
    check_row_pos,
    coarse_positions,
    default_max_jitter,
    full_image_row_pos,
    jitter_positions,
    sinusoid_table,
)

__all__ = [
    "HANet",
    "PositionalEncoding1d",
    "POS_ENCODINGS",
    "PAD_ROW_POS",
    "check_row_pos",
    "default_max_jitter",
    "sinusoid_table",
    "coarse_positions",
    "full_image_row_pos",
    "jitter_positions",
]
