"""DeepLabv3+ with HANet (paper §3.2, §4.1, Fig. 3 and 9; DESIGN §4).

The network and its module names mirror the official ``DeepV3PlusHANet``
(``network/deepv3.py`` of github.com/shachoi/HANet), so official checkpoints load with a
renaming inside the HANet modules only (see :mod:`hanet_fast.models.official`)::

    layer0 .. layer4      the trunk (hanet_fast.models.backbones); a "timm:NAME" backbone is one
                          module ``trunk`` instead (hanet_fast.models.timm_backbone)
    hanet0                L1: x_low = stage 3 (layer3 output), gates stage 4 (layer4 output)
    aspp                  ASPP: features[0] 1x1, features[1..3] 3x3 at rates 6/12/18 x 16/OS,
                          img_pooling + img_conv (image pooling); concatenated -> 1280 channels
    hanet1                L2: x_low = stage 4 (after L1), gates the ASPP output (1280)
    bot_aspp              1x1 conv 1280 -> 256 (+BN, ReLU)
    hanet2                L3: x_low = ASPP output (after L2), gates bot_aspp's output (256)
    bot_fine              1x1 conv low-level (layer1 output) -> 48 (+BN, ReLU)
    final1                decoder: two 3x3 convs 304 -> 256 -> 256 (+BN, ReLU); its input is
                          cat(bot_fine(low), upsample(bot_aspp)) (304 channels)
    hanet3                L4: x_low = decoder input (304), gates final1's output (256)
    final2                1x1 classifier 256 -> num_classes
    hanet4                L5: x_low = final1's output (after L4), gates the logits (max pooling)
    dsn                   auxiliary head on stage 3: 3x3 conv -> 512 (+BN, ReLU), Dropout2d(0.1),
                          1x1 -> num_classes

Upsampling is bilinear with ``align_corners=True`` as in the official code.

The structure above follows the official ``network/deepv3.py``, ``network/HANet.py`` and
``network/PosEmbedding.py``, read for this purpose. Two independent checks support it: the parameter counts
and the paper's FLOP counts of every row of the paper's Table 2 are reproduced (see
``python -m hanet_fast.models.summary`` and the README), and ``tests/test_models.py`` rebuilds
the official network in plain PyTorch and compares outputs through checkpoint loading.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from hanet_fast.models.backbones import OUTPUT_STRIDES, BackboneSpec, backbone_spec, build_trunk
from hanet_fast.models.timm_backbone import build_timm_trunk
from hanet_fast.nn import HANet, check_row_pos, full_image_row_pos

__all__ = [
    "HANET_LAYERS",
    "HANetConfig",
    "DeepLabConfig",
    "SegmentationOutput",
    "ASPP",
    "DeepLabV3PlusHANet",
    "deeplabv3plus",
]

#: The paper's names of the five HANet positions (Fig. 3); L{k} is module ``hanet{k-1}``.
HANET_LAYERS = ("L1", "L2", "L3", "L4", "L5")

ASPP_CHANNELS = 256
ASPP_OUT_CHANNELS = 5 * ASPP_CHANNELS  # 1280
SKIP_CHANNELS = 48
DECODER_CHANNELS = 256


@dataclass(frozen=True)
class HANetConfig:
    """Settings of one HANet layer: the arguments of :class:`hanet_fast.nn.HANet` other than
    its channels (see there for their meaning). The defaults are the paper's (§4.1,
    Table 3): 16 coarse rows, reduction 32, three 1-D convolutions (kernel 1, then 3, then
    ``kernel_size`` = 3), average
    pooling, dropout 0.1, sinusoidal positional encoding injected after the first
    convolution, training jitter 0.5."""

    rows: int = 16
    reduction: int = 32
    kernel_size: int = 3
    num_convs: int = 3
    pooling: str = "avg"
    dropout: float = 0.1
    pos_encoding: str | None = "sinusoidal"
    pos_injection: int = 2
    pos_noise: float = 0.5
    backend: str = "auto"

    def build(self, in_channels: int, out_channels: int) -> HANet:
        """A :class:`hanet_fast.nn.HANet` with these settings."""
        return HANet(in_channels, out_channels, **dataclasses.asdict(self))


def _layer_configs(
    hanet_layers: Sequence[int | bool], hanet: HANetConfig | Sequence[HANetConfig | None] | None
) -> tuple[HANetConfig | None, ...]:
    """Per-layer configs (None where the layer is off) from the builder's arguments."""
    if isinstance(hanet_layers, (str, bytes)) or not isinstance(hanet_layers, Sequence) or len(hanet_layers) != 5:
        raise ValueError(
            f"hanet_fast.models: hanet_layers must be a sequence of 5 on/off flags (L1..L5), got {hanet_layers!r}"
        )
    on = []
    for flag in hanet_layers:
        if flag not in (0, 1):  # True / False compare equal to 1 / 0
            raise ValueError(f"hanet_fast.models: hanet_layers entries must be 0/1 or booleans, got {hanet_layers!r}")
        on.append(bool(flag))
    if hanet is None:
        hanet = HANetConfig()
    if isinstance(hanet, HANetConfig):
        # One config for every layer; L5 pools with max as in the official code.
        per_layer: list[HANetConfig | None] = [hanet] * 4 + [dataclasses.replace(hanet, pooling="max")]
    elif isinstance(hanet, Sequence) and not isinstance(hanet, (str, bytes)) and len(hanet) == 5:
        per_layer = list(hanet)
        for k, cfg in enumerate(per_layer):
            if cfg is not None and not isinstance(cfg, HANetConfig):
                raise TypeError(f"hanet_fast.models: hanet[{k}] must be a HANetConfig or None, got {type(cfg).__name__}")
            if cfg is None and on[k]:
                raise ValueError(f"hanet_fast.models: HANet {HANET_LAYERS[k]} is on but hanet[{k}] is None")
    else:
        raise TypeError(
            "hanet_fast.models: hanet must be a HANetConfig (used for L1-L4, and for L5 with max pooling) "
            f"or a sequence of 5 HANetConfig/None (one per layer), got {hanet!r}"
        )
    return tuple(cfg if flag else None for cfg, flag in zip(per_layer, on))


@dataclass(frozen=True)
class DeepLabConfig:
    """Everything that defines a :class:`DeepLabV3PlusHANet`'s architecture (weights aside).

    ``hanet`` holds the effective config of each of L1..L5, None where the layer is off.
    ``DeepLabV3PlusHANet.from_config(cfg)`` rebuilds the network; ``dataclasses.asdict`` gives
    a plain dict for checkpoints.
    """

    backbone: str = "resnet101_deepstem"
    output_stride: int = 8
    num_classes: int = 19
    hanet: tuple[HANetConfig | None, ...] = (HANetConfig(),) * 4 + (None,)
    aux: bool = True

    @property
    def hanet_layers(self) -> tuple[int, ...]:
        return tuple(int(cfg is not None) for cfg in self.hanet)


class SegmentationOutput(NamedTuple):
    """What :meth:`DeepLabV3PlusHANet.forward` returns.

    Attributes:
        logits: ``[B, num_classes, H, W]`` at the input resolution.
        aux_logits: the auxiliary head's logits ``[B, num_classes, H3, W3]`` at stage 3's
            resolution (input / output stride, as the official code computes its auxiliary
            loss, against nearest-downsampled labels), or None (eval mode, ``aux=False``).
        attention: None, or (with ``return_attention=True``) a dict from the paper's layer name
            (``"L1"`` .. ``"L5"``, enabled layers only) to that layer's coarse attention map
            ``[B, C_gated, rows]`` in float (sigmoid outputs before the linear upsampling to
            the gated feature's height).
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] | None = None


def _initialize(*modules: nn.Module) -> None:
    """Official ``network/mynn.py: initialize_weights``: Kaiming-normal conv weights, zero
    biases, BN scale 1 and shift 0."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _conv_bn_relu(cin: int, cout: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as the official ``_AtrousSpatialPyramidPoolingModule``:
    a 1x1 branch and three 3x3 branches at rates ``(6, 12, 18) * 16 / output_stride`` (``features``),
    and image pooling (``img_pooling`` + ``img_conv``, upsampled back); outputs the concatenation
    ``[image, 1x1, r1, r2, r3]`` (5 x 256 = 1280 channels) without a projection (that is the
    decoder's ``bot_aspp``)."""

    def __init__(self, in_channels: int, channels: int = ASPP_CHANNELS, output_stride: int = 16,
                 rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        if output_stride in (4, 8):
            rates = tuple(16 // output_stride * r for r in rates)
        elif output_stride == 32:
            rates = tuple(r // 2 for r in rates)
        elif output_stride != 16:
            raise ValueError(f"hanet_fast.models: ASPP output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.rates = rates
        self.features = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1)] + [_conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        )
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = _conv_bn_relu(in_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = _upsample(self.img_conv(self.img_pooling(x)), x.shape[2:])
        return torch.cat([image] + [branch(x) for branch in self.features], dim=1)


class DeepLabV3PlusHANet(nn.Module):
    """DeepLabv3+ with HANet at up to five places (paper Fig. 3; DESIGN §4).

    Build it with :func:`deeplabv3plus` (same arguments) or :meth:`from_config`. Module names
    follow the official ``DeepV3PlusHANet`` (see the module docstring); disabled HANet layers
    and a disabled auxiliary head are ``None`` attributes, so every layer switch changes
    exactly the parameters of its own ``hanet{k}`` module.

    Attributes:
        config: the :class:`DeepLabConfig` it was built from.
        spec: the trunk's :class:`~hanet_fast.models.backbones.BackboneSpec`.
    """

    def __init__(
        self,
        backbone: str = "resnet101_deepstem",
        output_stride: int = 8,
        num_classes: int = 19,
        hanet_layers: Sequence[int | bool] = (1, 1, 1, 1, 0),
        hanet: HANetConfig | Sequence[HANetConfig | None] | None = None,
        aux: bool = True,
        pretrained_backbone: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        spec = backbone_spec(backbone)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"hanet_fast.models: num_classes must be a positive int, got {num_classes!r}")
        configs = _layer_configs(hanet_layers, hanet)
        self.config = DeepLabConfig(backbone, output_stride, num_classes, configs, bool(aux))
        self.spec: BackboneSpec = spec
        self.output_stride = output_stride
        self.num_classes = num_classes

        if spec.family == "timm":  # one module returning [low, stage 3, stage 4]
            self.trunk = build_timm_trunk(backbone, output_stride, pretrained_backbone)
        else:
            layers, _ = build_trunk(backbone, output_stride, pretrained_backbone)
            self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = layers

        self.aspp = ASPP(spec.out_channels, ASPP_CHANNELS, output_stride)
        self.bot_fine = _conv_bn_relu(spec.low_channels, SKIP_CHANNELS, 1)
        self.bot_aspp = _conv_bn_relu(ASPP_OUT_CHANNELS, DECODER_CHANNELS, 1)
        self.final1 = nn.Sequential(
            *_conv_bn_relu(SKIP_CHANNELS + DECODER_CHANNELS, DECODER_CHANNELS, 3),
            *_conv_bn_relu(DECODER_CHANNELS, DECODER_CHANNELS, 3),
        )
        self.final2 = nn.Sequential(nn.Conv2d(DECODER_CHANNELS, num_classes, kernel_size=1, bias=True))
        if aux:
            self.dsn = nn.Sequential(
                nn.Conv2d(spec.aux_channels, 512, kernel_size=3, padding=1, bias=True),
                nn.BatchNorm2d(512),
                nn.ReLU(inplace=True),
                nn.Dropout2d(0.1),
                nn.Conv2d(512, num_classes, kernel_size=1, bias=True),
            )
            _initialize(self.dsn)
        else:
            self.dsn = None

        # (x_low channels, gated channels) of L1..L5.
        channels = (
            (spec.aux_channels, spec.out_channels),
            (spec.out_channels, ASPP_OUT_CHANNELS),
            (ASPP_OUT_CHANNELS, DECODER_CHANNELS),
            (SKIP_CHANNELS + DECODER_CHANNELS, DECODER_CHANNELS),
            (DECODER_CHANNELS, num_classes),
        )
        for k, (cfg, (cin, cout)) in enumerate(zip(configs, channels)):
            setattr(self, f"hanet{k}", None if cfg is None else cfg.build(cin, cout))
        _initialize(self.aspp, self.bot_aspp, self.bot_fine, self.final1, self.final2)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(
        cls, config: DeepLabConfig, pretrained_backbone: str | os.PathLike | None = None
    ) -> "DeepLabV3PlusHANet":
        """Rebuild a network from its :class:`DeepLabConfig` (e.g. stored in a checkpoint)."""
        return cls(
            backbone=config.backbone,
            output_stride=config.output_stride,
            num_classes=config.num_classes,
            hanet_layers=config.hanet_layers,
            hanet=tuple(config.hanet),
            aux=config.aux,
            pretrained_backbone=pretrained_backbone,
        )

    @property
    def hanet_modules(self) -> dict[str, HANet]:
        """The enabled HANet modules by paper name: ``{"L1": self.hanet0, ...}``."""
        modules = {name: getattr(self, f"hanet{k}") for k, name in enumerate(HANET_LAYERS)}
        return {name: module for name, module in modules.items() if module is not None}

    def param_groups(self, weight_decay: float = 5e-4, hanet_weight_decay: float = 1e-4) -> list[dict]:
        """Optimizer parameter groups with the paper's weight decays (§4.1): HANet parameters
        get ``hanet_weight_decay``, the rest ``weight_decay``. Each group carries a ``"name"``."""
        hanet_ids = {id(p) for m in self.hanet_modules.values() for p in m.parameters()}
        main = [p for p in self.parameters() if id(p) not in hanet_ids]
        groups = [{"name": "main", "params": main, "weight_decay": weight_decay}]
        hanet = [p for p in self.parameters() if id(p) in hanet_ids]
        if hanet:
            groups.append({"name": "hanet", "params": hanet, "weight_decay": hanet_weight_decay})
        return groups

    # ------------------------------------------------------------------ forward
    def _check(self, images: torch.Tensor, row_pos: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"hanet_fast.models: images must be a [B, 3, H, W] tensor, got {shape}")
        if not images.is_floating_point():
            raise TypeError(f"hanet_fast.models: images must be floating point, got {images.dtype}")
        if row_pos is None:
            return full_image_row_pos(images.shape[0], images.shape[2], images.device)
        if not isinstance(row_pos, torch.Tensor) or tuple(row_pos.shape) != (images.shape[0], images.shape[2]):
            shape = tuple(row_pos.shape) if isinstance(row_pos, torch.Tensor) else type(row_pos).__name__
            raise ValueError(
                f"hanet_fast.models: row_pos must be a [B, H] = {[images.shape[0], images.shape[2]]} tensor of each "
                f"image row's position in the full image (fractions in [0, 1)), got {shape}"
            )
        if not row_pos.is_floating_point():
            raise TypeError(f"hanet_fast.models: row_pos must be floating point, got {row_pos.dtype}")
        row_pos = row_pos.float()
        check_row_pos(row_pos, "hanet_fast.models")  # once here, so the layers skip it: one host read-back
        return row_pos

    def forward(
        self,
        images: torch.Tensor,
        row_pos: torch.Tensor | None = None,
        *,
        return_attention: bool = False,
        return_aux: bool | None = None,
    ) -> SegmentationOutput:
        """Segment ``images``.

        Args:
            images: ``[B, 3, H, W]`` normalised images (NCHW or channels_last).
            row_pos: optional ``[B, H]`` float: each image row's vertical position in the
                original full image as a fraction in ``[0, 1)``; for rows ``top .. top + H`` of
                a full image of height ``H_full`` (both counted after any resizing):
                ``(top + arange(H)) / H_full``, and ``hanet_fast.nn.PAD_ROW_POS`` for padded
                rows. None means every image is a full image: exactly the positions
                ``arange(H) / H`` (:func:`hanet_fast.nn.full_image_row_pos`), for every ``H``
                (coarse row ``j`` then sits at image row ``floor(j * H / rows)``, whose
                position is ``j`` only when ``H`` is a multiple of ``rows``). Every HANet layer receives these
                image-level positions and resizes them straight to its coarse rows (as the
                official code does, whatever the layer's feature height).
            return_attention: also return every enabled HANet layer's coarse attention map.
            return_aux: compute the auxiliary logits; default: in training mode when the
                network has an auxiliary head.

        Returns:
            :class:`SegmentationOutput` ``(logits, aux_logits, attention)``.
        """
        row_pos = self._check(images, row_pos)
        if return_aux is None:
            return_aux = self.training and self.dsn is not None
        if return_aux and self.dsn is None:
            raise ValueError("hanet_fast.models: return_aux=True but the network was built with aux=False")
        attention: dict[str, torch.Tensor] | None = {} if return_attention else None

        def gate(k: int, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
            module = getattr(self, f"hanet{k}")
            pos = row_pos if module.pos_encoding is not None else None
            if attention is None:
                return module(x_low, x_high, pos, row_pos_checked=True)
            out, attn = module(x_low, x_high, pos, return_attention=True, row_pos_checked=True)
            attention[HANET_LAYERS[k]] = attn
            return out

        size = images.shape[2:]
        if self.spec.family == "timm":
            low, stage3, x = self.trunk(images)
        else:
            x = self.layer0(images)
            low = self.layer1(x)
            x = self.layer2(low)
            stage3 = self.layer3(x)
            x = self.layer4(stage3)
        if self.hanet0 is not None:
            x = gate(0, stage3, x)
        represent = x
        x = self.aspp(x)
        if self.hanet1 is not None:
            x = gate(1, represent, x)
        dec0_up = self.bot_aspp(x)
        if self.hanet2 is not None:
            dec0_up = gate(2, x, dec0_up)
        dec0_fine = self.bot_fine(low)
        dec0_up = _upsample(dec0_up, low.shape[2:])
        dec0 = torch.cat([dec0_fine, dec0_up], dim=1)
        dec1 = self.final1(dec0)
        if self.hanet3 is not None:
            dec1 = gate(3, dec0, dec1)
        dec2 = self.final2(dec1)
        if self.hanet4 is not None:
            dec2 = gate(4, dec1, dec2)
        logits = _upsample(dec2, size)
        aux_logits = self.dsn(stage3) if return_aux else None
        return SegmentationOutput(logits, aux_logits, attention)

    def extra_repr(self) -> str:
        on = "".join(str(v) for v in self.config.hanet_layers)
        return (
            f"backbone={self.config.backbone!r}, output_stride={self.output_stride}, num_classes={self.num_classes}, "
            f"hanet_layers={on}, aux={self.config.aux}"
        )


def deeplabv3plus(
    backbone: str = "resnet101_deepstem",
    output_stride: int = 8,
    num_classes: int = 19,
    hanet_layers: Sequence[int | bool] = (1, 1, 1, 1, 0),
    hanet: HANetConfig | Sequence[HANetConfig | None] | None = None,
    aux: bool = True,
    pretrained_backbone: str | os.PathLike | None = None,
) -> DeepLabV3PlusHANet:
    """Build DeepLabv3+ with HANet (paper Fig. 3 and 9).

    Args:
        backbone: one of :data:`hanet_fast.models.BACKBONES`: ``resnet50``, ``resnet101``,
            ``resnet101_deepstem`` (the paper's / official ResNet-101, three 3x3 stem convs),
            ``resnet152``, ``resnext50_32x4d``, ``resnext101_32x8d``, ``wide_resnet50_2``,
            ``wide_resnet101_2``, ``mobilenet_v2``, ``shufflenet_v2_x1_0``, ``mnasnet0_5``,
            ``mnasnet1_0``; or ``"timm:NAME"``, any timm model that gives a stride-4 feature
            and two more and takes any input size (see :mod:`hanet_fast.models.timm_backbone`).
        output_stride: 8, 16 or 32 (and 4 for the ResNet family), by dilation (official rules, see
            :mod:`hanet_fast.models.backbones`); also scales the ASPP rates by ``16 / OS``.
        num_classes: classes of the classifier (19 for Cityscapes / BDD100K).
        hanet_layers: five on/off flags for L1..L5 (paper Fig. 3, DESIGN §4). The default
            ``(1, 1, 1, 1, 0)`` is the paper's best (Table 3).
        hanet: a :class:`HANetConfig` for every enabled layer (L5 then pools with max, as
            the official code does), or a sequence of five ``HANetConfig``/None, one per layer,
            used as given. None: ``HANetConfig()``.
        aux: build the auxiliary head ``dsn`` on stage 3 (its loss weight, 0.4 in the paper,
            is the training loop's business).
        pretrained_backbone: None, ``"imagenet"`` (torchvision weights API; the torch.hub cache
            is used when the file is there, else it downloads, and a clear ``RuntimeError``
            says what to do when that fails) or a local file path (see
            :func:`hanet_fast.models.backbones.build_trunk`).
    """
    return DeepLabV3PlusHANet(backbone, output_stride, num_classes, hanet_layers, hanet, aux, pretrained_backbone)
