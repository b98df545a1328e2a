"""hanet_fast: fused height-driven attention (HANet, CVPR 2020) for PyTorch."""

from hanet_fast import ops
from hanet_fast.ops import height_gate, height_pool

__version__ = "0.1.0"
__all__ = ["ops", "height_pool", "height_gate", "__version__"]
