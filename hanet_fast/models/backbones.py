"""Backbones ("trunks") of the DeepLabv3+ model zoo, built from torchvision (DESIGN §4).

Every trunk is split into five stages ``layer0 .. layer4`` exactly as the official HANet code
(``network/deepv3.py`` of github.com/shachoi/HANet, class ``DeepV3PlusHANet``) splits it, so
that the stage modules carry the official parameter names:

===================  ==========================================  =========  =======  =======
backbone             layer0 / layer1 / layer2 / layer3 / layer4  low-level  stage 3  stage 4
===================  ==========================================  =========  =======  =======
resnet50, resnet101, stem (7x7 conv, BN, ReLU, max pool) /       256 ch,    1024 ch  2048 ch
resnet152,           layer1 / layer2 / layer3 / layer4           stride 4
resnext50_32x4d,
resnext101_32x8d,
wide_resnet50_2,
wide_resnet101_2
resnet101_deepstem   stem of three 3x3 convs (64, 64, 128) as    256 ch,    1024 ch  2048 ch
                     ``network/Resnet.py`` builds it, then       stride 4
                     layer1 (128 input channels) .. layer4
mobilenet_v2         features[0:2] / [2:7] / [7:11] / [11:18] /  32 ch,     320 ch   1280 ch
                     Sequential(features[18])                    stride 8
shufflenet_v2_x1_0   Sequential(conv1, maxpool) / stage2 /       116 ch,    464 ch   1024 ch
                     stage3 / stage4 / conv5                     stride 8
mnasnet0_5           layers[0:8] / [8:10] / [10:12] / [12:14] /  24 ch,     160 ch   1280 ch
mnasnet1_0           [14:17] (each a Sequential)                 40 ch,     320 ch   1280 ch
                                                                 stride 8
===================  ==========================================  =========  =======  =======

Output stride 4 / 8 / 16 / 32 is reached by dilation, the way the official code does it (so
that its checkpoints give the same outputs here):

- ResNet family: at output stride 16 every ``conv2`` (the 3x3) of ``layer4`` gets dilation 2 and
  stride 1, and ``downsample.0`` stride 1; at output stride 8 ``layer3`` gets dilation 2 and
  ``layer4`` dilation 4 the same way; at output stride 4 (official variant ``D4``, used by its
  ResNeXt-101 OS 4 network) ``layer2``, ``layer3`` and ``layer4`` get dilations 2, 4 and 8. Every block of a dilated stage has the same dilation (the
  official rule; torchvision's ``replace_stride_with_dilation`` would keep the first block of a
  stage at the previous dilation and give different outputs for the same weights).
- MobileNetV2, ShuffleNetV2 and MNASNet: every strided convolution of ``layer3`` (output
  stride 16) or of ``layer2`` and ``layer3`` (dilation 2 and 4, output stride 8) gets stride 1,
  that dilation and padding equal to the dilation; the other convolutions of those stages keep
  dilation 1 (again the official rule; output stride 4 is not defined for these trunks). The
  padding is "same" for 3x3 kernels only: MNASNet's strided depthwise convolutions are 5x5, so,
  as in the official network, each one dilated by ``d`` shrinks its output by ``2 * d`` rows and
  columns (at output stride 16, ``layer3``'s output is 4 smaller than the input / 16; at output
  stride 8, 12 smaller than the input / 8).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

try:
    import torchvision.models as tvm
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hanet_fast.models builds its backbones with torchvision, which is not installed: pip install torchvision"
    ) from _err

__all__ = ["BACKBONES", "OUTPUT_STRIDES", "BackboneSpec", "backbone_spec", "build_trunk", "imagenet_weights"]

#: The backbones :func:`build_trunk` builds.
BACKBONES = (
    "resnet50",
    "resnet101",
    "resnet101_deepstem",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "mobilenet_v2",
    "shufflenet_v2_x1_0",
    "mnasnet0_5",
    "mnasnet1_0",
)

#: The output strides a trunk can be dilated to (4: the ResNet family only, see
#: :attr:`BackboneSpec.output_strides`).
OUTPUT_STRIDES = (4, 8, 16, 32)

_RESNETS = {
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
    "resnet101_deepstem": tvm.resnet101,
    "resnet152": tvm.resnet152,
    "resnext50_32x4d": tvm.resnext50_32x4d,
    "resnext101_32x8d": tvm.resnext101_32x8d,
    "wide_resnet50_2": tvm.wide_resnet50_2,
    "wide_resnet101_2": tvm.wide_resnet101_2,
}


@dataclass(frozen=True)
class BackboneSpec:
    """Channels and strides of a trunk's stages.

    Attributes:
        name: the backbone name (one of :data:`BACKBONES`).
        low_channels: channels of ``layer1``'s output (the decoder's low-level skip).
        low_stride: stride of ``layer1``'s output with respect to the input image.
        aux_channels: channels of ``layer3``'s output (stage 3: auxiliary head, HANet L1 input).
        out_channels: channels of ``layer4``'s output (stage 4: ASPP input).
        family: ``"resnet"``, ``"mobile"`` (how the trunk is dilated) or ``"timm"``.
        output_strides: the output strides it can be built at.
    """

    name: str
    low_channels: int
    low_stride: int
    aux_channels: int
    out_channels: int
    family: str
    output_strides: tuple[int, ...] = (8, 16, 32)


_MNASNETS = {"mnasnet0_5": tvm.mnasnet0_5, "mnasnet1_0": tvm.mnasnet1_0}

_SPECS = {
    **{name: BackboneSpec(name, 256, 4, 1024, 2048, "resnet", OUTPUT_STRIDES) for name in _RESNETS},
    "mobilenet_v2": BackboneSpec("mobilenet_v2", 32, 8, 320, 1280, "mobile"),
    "shufflenet_v2_x1_0": BackboneSpec("shufflenet_v2_x1_0", 116, 8, 464, 1024, "mobile"),
    "mnasnet0_5": BackboneSpec("mnasnet0_5", 24, 8, 160, 1280, "mobile"),
    "mnasnet1_0": BackboneSpec("mnasnet1_0", 40, 8, 320, 1280, "mobile"),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of backbone ``name`` (one of :data:`BACKBONES` or ``"timm:NAME"``,
    see :mod:`hanet_fast.models.timm_backbone`); raises ``ValueError`` for an unknown name."""
    from hanet_fast.models import timm_backbone  # here: it imports this module

    if timm_backbone.is_timm_backbone(name):
        return timm_backbone.timm_spec(name)
    if name not in _SPECS:
        raise ValueError(f"hanet_fast.models: backbone must be one of {BACKBONES} or 'timm:NAME', got {name!r}")
    return _SPECS[name]


def imagenet_weights(name: str) -> tvm.WeightsEnum:
    """The torchvision ImageNet weights used for ``pretrained_backbone="imagenet"``.

    The ``IMAGENET1K_V1`` weights, the ones ``pretrained=True`` loaded when the official code
    was written. ``resnet101_deepstem`` has none in torchvision: raises ``ValueError``.
    """
    if backbone_spec(name).family == "timm":
        raise ValueError(f"hanet_fast.models: {name} is a timm backbone: its weights come from timm "
                         "(hanet_fast.models.timm_backbone), not torchvision")
    if name == "resnet101_deepstem":
        raise ValueError(
            "hanet_fast.models: torchvision has no ImageNet weights for the deep-stem ResNet-101 "
            "(three 3x3 stem convolutions); pass pretrained_backbone=PATH to a local file instead, "
            "e.g. the 'resnet101-imagenet.pth' that the official HANet code loads from ./pretrained/ "
            "(keys conv1/bn1/conv2/bn2/conv3/bn3/layer1..layer4[/fc])"
        )
    return {
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
        "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V1,
        "resnet152": tvm.ResNet152_Weights.IMAGENET1K_V1,
        "resnext50_32x4d": tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V1,
        "resnext101_32x8d": tvm.ResNeXt101_32X8D_Weights.IMAGENET1K_V1,
        "wide_resnet50_2": tvm.Wide_ResNet50_2_Weights.IMAGENET1K_V1,
        "wide_resnet101_2": tvm.Wide_ResNet101_2_Weights.IMAGENET1K_V1,
        "mobilenet_v2": tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
        "shufflenet_v2_x1_0": tvm.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1,
        "mnasnet0_5": tvm.MNASNet0_5_Weights.IMAGENET1K_V1,
        "mnasnet1_0": tvm.MNASNet1_0_Weights.IMAGENET1K_V1,
    }[name]


# --------------------------------------------------------------------------- construction
def _deep_stem(net: tvm.ResNet) -> tvm.ResNet:
    """Turn a torchvision ResNet into the official ``ResNet3X3`` (``network/Resnet.py``): stem of
    three 3x3 convolutions 3->64 (stride 2), 64->64, 64->128, each with BN and ReLU, then the
    max pool; ``layer1`` takes 128 channels. Attribute names follow ``Resnet.py``, so its
    ImageNet file (``conv1/bn1/conv2/bn2/conv3/bn3/layer*/fc``) loads into the result."""
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(64)
    net.relu1 = nn.ReLU(inplace=True)
    net.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.bn2 = nn.BatchNorm2d(64)
    net.relu2 = nn.ReLU(inplace=True)
    net.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=1, padding=1, bias=False)
    net.bn3 = nn.BatchNorm2d(128)
    net.relu3 = nn.ReLU(inplace=True)
    first = net.layer1[0]
    first.conv1 = nn.Conv2d(128, 64, kernel_size=1, bias=False)
    first.downsample[0] = nn.Conv2d(128, 256, kernel_size=1, bias=False)
    for conv in (net.conv1, net.conv2, net.conv3, first.conv1, first.downsample[0]):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return net


def _classifier(name: str) -> nn.Module:
    """The torchvision classification network the trunk is cut from (random init, nothing downloaded)."""
    if name in _RESNETS:
        net = _RESNETS[name](weights=None)
        return _deep_stem(net) if name == "resnet101_deepstem" else net
    if name == "mobilenet_v2":
        return tvm.mobilenet_v2(weights=None)
    if name in _MNASNETS:
        return _MNASNETS[name](weights=None)
    return tvm.shufflenet_v2_x1_0(weights=None)


def _classifier_head_prefixes(name: str) -> tuple[str, ...]:
    return ("classifier.",) if name == "mobilenet_v2" or name in _MNASNETS else ("fc.",)


def _split(name: str, net: nn.Module) -> list[nn.Module]:
    """Cut the classification network into the official ``layer0 .. layer4``."""
    if name == "resnet101_deepstem":
        stem = nn.Sequential(
            net.conv1, net.bn1, net.relu1, net.conv2, net.bn2, net.relu2, net.conv3, net.bn3, net.relu3, net.maxpool
        )
        return [stem, net.layer1, net.layer2, net.layer3, net.layer4]
    if name in _RESNETS:
        return [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), net.layer1, net.layer2, net.layer3, net.layer4]
    if name == "mobilenet_v2":
        f = net.features
        return [
            nn.Sequential(f[0], f[1]),
            nn.Sequential(*f[2:7]),
            nn.Sequential(*f[7:11]),
            nn.Sequential(*f[11:18]),
            nn.Sequential(f[18]),
        ]
    if name in _MNASNETS:
        m = net.layers
        return [nn.Sequential(*m[0:8]), nn.Sequential(*m[8:10]), nn.Sequential(*m[10:12]), nn.Sequential(*m[12:14]),
                nn.Sequential(*m[14:17])]
    return [nn.Sequential(net.conv1, net.maxpool), net.stage2, net.stage3, net.stage4, net.conv5]


def _dilate_resnet_stage(stage: nn.Module, dilation: int) -> None:
    for name, module in stage.named_modules():
        if "conv2" in name:
            module.dilation, module.padding, module.stride = (dilation, dilation), (dilation, dilation), (1, 1)
        elif "downsample.0" in name:
            module.stride = (1, 1)


def _dilate_strided_convs(stage: nn.Module, dilation: int) -> None:
    for module in stage.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.dilation, module.padding, module.stride = (dilation, dilation), (dilation, dilation), (1, 1)


def _dilate(spec: BackboneSpec, layers: list[nn.Module], output_stride: int) -> None:
    """Official dilation rules (``variant`` 'D4' = OS 4, 'D' = OS 8, 'D16' = OS 16, 'D32' = OS 32)."""
    dilate = _dilate_resnet_stage if spec.family == "resnet" else _dilate_strided_convs
    first = 3 if spec.family == "resnet" else 2  # the stage whose output is at stride 16
    if output_stride == 4:  # ResNet family only (BackboneSpec.output_strides)
        dilate(layers[2], 2)
        dilate(layers[3], 4)
        dilate(layers[4], 8)
    elif output_stride == 8:
        dilate(layers[first], 2)
        dilate(layers[first + 1], 4)
    elif output_stride == 16:
        dilate(layers[first + 1], 2)


# --------------------------------------------------------------------------- weights
def numpy_safe_globals() -> list:
    """numpy types a trusted-format snapshot holds (``mean_iu`` is a numpy float)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    core = getattr(np, "_core", None) or np.core
    safe = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        safe += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return safe


def _unwrap_state_dict(obj: object, what: str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded file: the object itself, or under 'state_dict' /
    'model'; a leading 'module.' (DataParallel / DDP) is removed from every key."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"hanet_fast.models: {what} does not hold a state dict (a mapping of names to tensors)")
    out = {}
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def _describe(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def state_dict_differences(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """How a loaded ``state`` differs from a module's ``own`` state dict, each list sorted: keys
    missing from ``state``, keys ``own`` lacks, and ``(key, state shape, own shape)`` of the
    keys whose shapes differ."""
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        (k, tuple(state[k].shape), tuple(own[k].shape)) for k in state if k in own and state[k].shape != own[k].shape
    )
    return missing, unexpected, mismatched


def check_state_dict_fits(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise one ``ValueError`` naming ``what`` and listing every key missing from ``state``,
    every key ``own`` lacks and every shape mismatch; return when ``state`` fits ``own``."""
    missing, unexpected, shapes = state_dict_differences(state, own)
    mismatched = [f"{k} (file {file}, model {model})" for k, file, model in shapes]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing from the file: {_describe(missing)}")
        if unexpected:
            parts.append(f"not in the backbone: {_describe(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch: {_describe(mismatched)}")
        raise ValueError(f"hanet_fast.models: {what} does not fit the backbone; " + "; ".join(parts))


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, ignore: tuple[str, ...] = ()) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    check_state_dict_fits(state, {k: v for k, v in module.state_dict().items() if not k.startswith(ignore)}, what)
    result = module.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith(ignore) for k in result.missing_keys)


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    weights = imagenet_weights(name)
    try:
        # torch.hub looks in its cache ($TORCH_HOME/hub/checkpoints) first and downloads only if absent.
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # no network, proxy, bad hash, ...: one clear message
        raise RuntimeError(
            f"hanet_fast.models: could not get the ImageNet weights of {name} ({weights}) from {weights.url}: "
            f"{type(err).__name__}: {err}. Without internet access, download that file elsewhere and either put it "
            f"in {os.path.join(torch.hub.get_dir(), 'checkpoints')} or pass pretrained_backbone=PATH to it."
        ) from err


def build_trunk(
    name: str, output_stride: int = 8, pretrained: str | os.PathLike | None = None
) -> tuple[list[nn.Module], BackboneSpec]:
    """Build backbone ``name`` as the five official stages, dilated to ``output_stride``.

    Args:
        name: one of :data:`BACKBONES`.
        output_stride: 8, 16 or 32; 4 for the ResNet family.
        pretrained: None (random init), ``"imagenet"`` (torchvision's ImageNet weights through
            its weights API: taken from the torch.hub cache, downloaded if missing, a clear
            ``RuntimeError`` when that fails), or the path of a local file holding either the
            classification network's state dict in torchvision's (or, for
            ``resnet101_deepstem``, ``network/Resnet.py``'s) naming, with or without its
            classifier, or the trunk's own ``layer0.* .. layer4.*`` state dict; it may sit
            under ``'state_dict'`` / ``'model'`` and carry a ``module.`` prefix.

    Returns:
        ``([layer0, layer1, layer2, layer3, layer4], spec)``.
    """
    spec = backbone_spec(name)
    if isinstance(output_stride, bool) or output_stride not in spec.output_strides:
        raise ValueError(f"hanet_fast.models: output_stride of {name} must be one of {spec.output_strides}, "
                         f"got {output_stride!r}")
    net = _classifier(name)
    trunk_state = None
    if pretrained is not None:
        if isinstance(pretrained, str) and pretrained == "imagenet":
            _load_strict(net, _imagenet_state_dict(name), f"the ImageNet weights of {name}",
                         ignore=_classifier_head_prefixes(name))
        elif isinstance(pretrained, (str, os.PathLike)):
            path = os.fspath(pretrained)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"hanet_fast.models: pretrained_backbone must be None, 'imagenet' or the path of an existing "
                    f"file, got {path!r}"
                )
            try:  # official snapshots (e.g. the Mapillary-pretrained one) hold a numpy mean_iu
                with torch.serialization.safe_globals(numpy_safe_globals()):
                    loaded = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                raise ValueError(f"hanet_fast.models: pretrained_backbone {path!r} holds objects that "
                                 f"torch.load(weights_only=True) refuses: {err}") from err
            state = _unwrap_state_dict(loaded, repr(path))
            if any(k.startswith("layer0.") for k in state):
                trunk_state = state
            else:
                _load_strict(net, state, repr(path), ignore=_classifier_head_prefixes(name))
        else:
            raise TypeError(
                f"hanet_fast.models: pretrained_backbone must be None, 'imagenet' or a path, got {type(pretrained).__name__}"
            )
    layers = _split(name, net)
    _dilate(spec, layers, output_stride)
    if trunk_state is not None:
        container = nn.Module()
        for i, layer in enumerate(layers):
            container.add_module(f"layer{i}", layer)
        stages = tuple(f"layer{i}." for i in range(5))
        # a whole hanet_fast model's state dict is fine: only the trunk's entries are used
        trunk_state = {k: v for k, v in trunk_state.items() if k.startswith(stages)}
        _load_strict(container, trunk_state, repr(os.fspath(pretrained)))
    return layers, spec
