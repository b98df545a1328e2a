"""Loading checkpoints saved by the official HANet code (github.com/shachoi/HANet).

What is known and what is reconstructed. The official network is ``DeepV3PlusHANet`` in
``network/deepv3.py``, with ``HANet_Conv`` (``network/HANet.py``), ``PosEncoding1D`` /
``PosEmbedding1D`` (``network/PosEmbedding.py``) and the deep-stem ResNet-101 of
``network/Resnet.py``; its ``train.py`` saves ``{'state_dict': net.state_dict(), 'optimizer':
..., 'epoch': ..., 'mean_iu': ..., 'command': ' '.join(sys.argv[1:])}`` from a
``DistributedDataParallel`` model (keys start with ``module.``). The code was not available
when this loader was written: its key names, its ``--arch`` function names
(``network.deepv3.DeepR101V3PlusD_HANet_OS8`` etc.) and its command-line flags
(``--hanet``, ``--hanet_set KERNEL R_FACTOR LAYERS``, ``--hanet_pos INJECTION IS_ENCODING``,
``--pos_rfactor``, ``--pooling``, ``--dropout``, ``--pos_noise``) are reconstructed from
knowledge of that code and of the derived code bases that copy it, and are exercised by a
test fixture that rebuilds the official network in plain PyTorch with that naming. The keys::

    layer0.*            stem: torchvision trunks ``Sequential(conv1, bn1, relu, maxpool)``
                        (``layer0.0``, ``layer0.1``); deep stem ``conv1 bn1 relu1 conv2 bn2
                        relu2 conv3 bn3 relu3 maxpool`` (``layer0.0/1/3/4/6/7``); MobileNetV2
                        ``features[0:2]``; ShuffleNetV2 ``Sequential(conv1, maxpool)``;
                        MNASNet ``layers[0:8]``
    layer1..layer4.*    torchvision / Resnet.py stage modules (see hanet_fast.models.backbones)
    aspp.features.{0..3}.{0,1}.*, aspp.img_conv.{0,1}.*
    bot_fine.{0,1}.*, bot_aspp.{0,1}.*, final1.{0,1,3,4}.*, final2.0.*
    dsn.{0,1,4}.*       auxiliary head (only with --aux_loss)
    hanet{0..4}.attention_first.{0,1}.*, .attention_second.{0[,1]}.*, .attention_third.0.*,
    hanet{k}.pos_emb1d_1st.pos_layer.weight | hanet{k}.pos_emb1d_2nd.pos_layer.weight

Every key maps one to one onto :class:`~hanet_fast.models.DeepLabV3PlusHANet`, which uses the
same names except inside the HANet modules (``attention_first/second/third`` ->
``conv1/conv2/conv3``, ``pos_emb1d_*.pos_layer.weight`` -> ``pos_encoding.weight``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import shlex
from collections.abc import Mapping, Sequence

import torch

from hanet_fast.models.backbones import BACKBONES, OUTPUT_STRIDES, numpy_safe_globals, state_dict_differences
from hanet_fast.models.deeplab import DeepLabConfig, DeepLabV3PlusHANet, HANetConfig
from hanet_fast.nn.positional import sinusoid_table

__all__ = [
    "OfficialCheckpointError",
    "parse_official_command",
    "convert_official_state_dict",
    "to_official_state_dict",
    "infer_official_config",
    "load_official_checkpoint",
    "read_official_state_dict",
]

#: Keys of the official model that are not network weights (the loss modules' buffers).
IGNORED_PREFIXES = ("criterion.", "criterion_aux.")

_RENAMES = (
    ("attention_first.", "conv1."),
    ("attention_second.", "conv2."),
    ("attention_third.", "conv3."),
    ("pos_emb1d_1st.pos_layer.weight", "pos_encoding.weight"),
    ("pos_emb1d_2nd.pos_layer.weight", "pos_encoding.weight"),
)
_HANET_KEY = re.compile(r"^(hanet[0-4])\.(.*)$")

# ``network.deepv3.<function>``: backbone token and output-stride suffix (no suffix: OS 16).
_ARCH = re.compile(r"Deep(?P<trunk>[A-Za-z]+\d*)V3PlusD(?:_HANet)?(?:_OS(?P<os>\d+))?$")
_ARCH_TRUNKS = {
    "R50": "resnet50",
    "R101": "resnet101_deepstem",  # the official 'resnet-101' trunk is Resnet.py's deep-stem ResNet3X3
    "R152": "resnet152",
    "ResNext50": "resnext50_32x4d",
    "ResNext101": "resnext101_32x8d",
    "WideResNet50": "wide_resnet50_2",
    "WideResNet101": "wide_resnet101_2",
    "ShuffleNet": "shufflenet_v2_x1_0",
    "MobileNet": "mobilenet_v2",
    "MNASNet05": "mnasnet0_5",
    "MNASNet10": "mnasnet1_0",
}
# MNASNet's last block -> stage 4 convolution input width (layer4.0.weight [1280, width, 1, 1]).
_MNASNET_WIDTHS = {160: "mnasnet0_5", 320: "mnasnet1_0"}


class OfficialCheckpointError(ValueError):
    """An official checkpoint that cannot be read, inferred or matched to a hanet_fast network."""


# --------------------------------------------------------------------------- reading
def _torch_load(path: str, map_location, weights_only: bool) -> object:
    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise OfficialCheckpointError(
            f"hanet_fast.models: {path!r} holds objects that torch.load(weights_only=True) refuses ({err}). "
            "If you trust the file, pass weights_only=False."
        ) from err


def _open(checkpoint: str | os.PathLike | Mapping, map_location, weights_only: bool,
          name: str | None = None) -> tuple[object, str]:
    """(the loaded object, how to name it in messages) of a file or an already loaded object
    (called ``name`` when given, e.g. the file it came from)."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return checkpoint, repr(name) if name else "the checkpoint object"
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hanet_fast.models: no checkpoint file at {path!r}")
    return _torch_load(path, map_location, weights_only), repr(path)


def _split_checkpoint(obj: object, what: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict without ``module.`` prefixes, the saved command line or None)."""
    command = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        command = obj.get("command") if isinstance(obj.get("command"), str) else None
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OfficialCheckpointError(
            f"hanet_fast.models: {what} is neither a state dict nor a dict with a 'state_dict' entry"
        )
    return {_strip_module(key): value for key, value in obj.items()}, command


def parse_official_command(command: str) -> dict[str, object]:
    """The HANet-relevant flags of an official ``train.py`` command line (the ``'command'`` entry
    of its snapshots): ``arch`` (str), ``hanet`` (5 ints), ``hanet_set`` (kernel size, r factor,
    number of convs), ``hanet_pos`` (injection, is_encoding), ``pos_rfactor`` (int),
    ``pooling`` (str), ``dropout``, ``pos_noise`` (float), ``aux_loss`` (bool). Flags absent
    from the command are absent from the result.

    Raises:
        OfficialCheckpointError: the command cannot be split into words (an unbalanced quote), or
            one of those flags has a value of the wrong kind (named with the value)."""
    try:
        tokens = shlex.split(command)
    except ValueError as err:
        raise OfficialCheckpointError(f"hanet_fast.models: the saved command line cannot be split into words "
                                      f"({err}): {command[:120]!r}") from None
    out: dict[str, object] = {}
    lists = {"--hanet": "hanet", "--hanet_set": "hanet_set", "--hanet_pos": "hanet_pos"}
    scalars = {"--arch": ("arch", str), "--pos_rfactor": ("pos_rfactor", int), "--pooling": ("pooling", str),
               "--dropout": ("dropout", float), "--pos_noise": ("pos_noise", float)}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        flag, _, inline = tok.partition("=")
        if flag in lists:
            values = [inline] if inline else []
            while i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                i += 1
                values.append(tokens[i])
            try:
                out[lists[flag]] = [int(v) for v in values]
            except ValueError:
                raise OfficialCheckpointError(f"hanet_fast.models: the saved command line's {flag} "
                                              f"{' '.join(values)!r} is not a list of integers") from None
        elif flag in scalars:
            name, kind = scalars[flag]
            value = inline
            if not inline and i + 1 < len(tokens):
                i += 1
                value = tokens[i]
            try:
                out[name] = kind(value)
            except ValueError:
                raise OfficialCheckpointError(f"hanet_fast.models: the saved command line's {flag} {value!r} is "
                                              f"not a{'n integer' if kind is int else ' number'}") from None
            if kind is float and not math.isfinite(out[name]):
                raise OfficialCheckpointError(f"hanet_fast.models: the saved command line's {flag} {value!r} is "
                                              f"not a finite number")
        elif flag == "--aux_loss":
            out["aux_loss"] = True
        i += 1
    return out


# --------------------------------------------------------------------------- key mapping
def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key names -> hanet_fast key names (``module.`` prefixes and the loss modules'
    keys dropped). Only keys inside ``hanet0..hanet4`` change; everything else is kept as is."""
    out = {}
    for key, value in state_dict.items():
        key = _strip_module(key)
        if key.startswith(IGNORED_PREFIXES):
            continue
        match = _HANET_KEY.match(key)
        if match:
            head, rest = match.groups()
            for old, new in _RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            key = f"{head}.{rest}"
        out[key] = value
    return out


def to_official_state_dict(model: DeepLabV3PlusHANet) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_official_state_dict`: ``model``'s state dict under the
    official names (without ``module.``), e.g. to run it in the official code."""
    injection = {f"hanet{k}": getattr(model, f"hanet{k}").pos_injection
                 for k in range(5) if getattr(model, f"hanet{k}") is not None}
    out = {}
    for key, value in model.state_dict().items():
        match = _HANET_KEY.match(key)
        if match:
            head, rest = match.groups()
            if rest == "pos_encoding.weight":
                which = "1st" if injection[head] == 1 else "2nd"
                rest = f"pos_emb1d_{which}.pos_layer.weight"
            else:
                for old, new in _RENAMES[:3]:
                    if rest.startswith(new):
                        rest = old + rest[len(new):]
                        break
            key = f"{head}.{rest}"
        out[key] = value
    return out


# --------------------------------------------------------------------------- inference
def _count_blocks(state: Mapping[str, torch.Tensor], stage: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"^{stage}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _infer_backbone(state: Mapping[str, torch.Tensor]) -> str:
    def shape(key: str) -> tuple[int, ...] | None:
        return tuple(state[key].shape) if key in state else None

    if shape("layer1.0.conv2.weight") is not None:
        blocks = _count_blocks(state, "layer3")
        depth = {6: 50, 23: 101, 36: 152}.get(blocks)
        conv2 = shape("layer1.0.conv2.weight")
        deep = shape("layer0.6.weight") is not None
        if conv2[:2] == (64, 64):
            width = "resnet"
        elif conv2[:2] == (256, 8):
            width = "resnext_32x8d"
        elif conv2[:2] == (128, 4):
            width = "resnext_32x4d"
        elif conv2[:2] == (128, 128):
            width = "wide"
        else:
            width = f"unknown (layer1.0.conv2.weight {conv2})"
        name = {
            ("resnet", 50, False): "resnet50",
            ("resnet", 101, False): "resnet101",
            ("resnet", 101, True): "resnet101_deepstem",
            ("resnet", 152, False): "resnet152",
            ("resnext_32x4d", 50, False): "resnext50_32x4d",
            ("resnext_32x8d", 101, False): "resnext101_32x8d",
            ("wide", 50, False): "wide_resnet50_2",
            ("wide", 101, False): "wide_resnet101_2",
        }.get((width, depth, deep))
        if name is None:
            raise OfficialCheckpointError(
                f"hanet_fast.models: the checkpoint's trunk is a ResNet-like network that is not supported "
                f"(block width {width}, {blocks} blocks in layer3, {'deep' if deep else '7x7'} stem); "
                f"supported backbones: {BACKBONES}"
            )
        return name
    if shape("layer1.0.branch1.0.weight") is not None:
        return "shufflenet_v2_x1_0"
    if shape("layer4.0.0.weight") is not None and shape("layer1.0.conv.0.0.weight") is not None:
        return "mobilenet_v2"
    if shape("layer1.0.0.layers.0.weight") is not None and shape("layer4.0.weight") is not None:
        width = shape("layer4.0.weight")[1]
        if width not in _MNASNET_WIDTHS:
            raise OfficialCheckpointError(
                f"hanet_fast.models: the checkpoint's trunk is an MNASNet whose last block has {width} channels; "
                f"supported: {_MNASNET_WIDTHS} (MNASNet 0.5 and 1.0)")
        stem = shape("layer0.0.weight")
        if width == 160 and stem is not None and stem[0] != 16:
            raise OfficialCheckpointError(
                f"hanet_fast.models: the checkpoint's MNASNet 0.5 stem has {stem[0]} channels: it was saved with "
                "torchvision < 0.5, whose MNASNet 0.5 kept the 1.0 stem (32 channels); torchvision now scales the "
                "stem (16 channels) and that older variant is not supported")
        return _MNASNET_WIDTHS[width]
    trunk = sorted({k.split(".")[0] for k in state if k.startswith("layer")})
    raise OfficialCheckpointError(
        f"hanet_fast.models: cannot tell the backbone from the checkpoint's keys (trunk stages found: {trunk or 'none'}; "
        f"e.g. {sorted(state)[:5]}); supported backbones: {BACKBONES}. Pass backbone=... to say which."
    )


def _infer_reduction(in_channels: int, mid: int, preferred: int | None) -> int:
    candidates = ([preferred] if preferred else []) + [32, 64, 16, 8, 128, 4, 2, 1] + list(range(1, in_channels + 1))
    for r in candidates:
        if r > 0 and math.ceil(in_channels / r) == mid:
            return r
    raise OfficialCheckpointError(
        f"hanet_fast.models: a HANet layer reduces {in_channels} channels to {mid}, which no positive reduction "
        "ratio gives (negative --hanet_set r factors, i.e. channel expansion, are not supported)"
    )


def infer_official_config(
    state_dict: Mapping[str, torch.Tensor],
    command: str | None = None,
    *,
    backbone: str | None = None,
    output_stride: int | None = None,
    num_classes: int | None = None,
    hanet: HANetConfig | None = None,
) -> DeepLabConfig:
    """The :class:`DeepLabConfig` of an official checkpoint.

    From the weights: backbone (stem, block count and width of the trunk), number of classes
    (``final2``), auxiliary head (``dsn``), which HANet layers exist and, per layer, the
    reduction ratio (any ``r`` with ``ceil(C_in / r)`` equal to the stored width; the
    command's or the usual ones first), number of 1-D convolutions, last kernel size, where
    the positional encoding is injected, the number of coarse rows (table length - 1) and
    whether the table is the fixed sinusoid (else learned).

    From the saved command line when there is one: output stride (``--arch ..._OS8`` etc.;
    no suffix means 16), ``--pos_rfactor`` (rows = 128 // pos_rfactor; for a layer without a
    positional table this is the only source, else ``hanet.rows``, 16 by default),
    ``--pooling``, ``--dropout``, ``--pos_noise``, ``--hanet_pos``'s is-encoding flag and
    ``--hanet_set``'s r factor; ``--hanet`` is checked against the layers found.

    The output stride is not in the weights (dilations have no parameters): without a command
    line it must be given. Explicit arguments win over the command line; ``hanet`` supplies
    the settings neither source has (dropout, jitter, backend); L5 always pools with max.

    Raises:
        OfficialCheckpointError: when something cannot be inferred, is unsupported or conflicts.
    """
    state = convert_official_state_dict(state_dict)
    raw_keys = {_strip_module(k) for k in state_dict}
    flags = parse_official_command(command) if command else {}
    backbone, output_stride = _trunk_and_stride(state, flags, backbone, output_stride)
    classes = _classes(state, num_classes)
    configs = _hanet_configs(state, raw_keys, flags, hanet or HANetConfig())
    return DeepLabConfig(backbone, output_stride, classes, tuple(configs), "dsn.0.weight" in state)


def _trunk_and_stride(state: Mapping[str, torch.Tensor], flags: dict, backbone: str | None,
                      output_stride: int | None) -> tuple[str, int]:
    """The backbone (from the weights, checked against ``--arch``) and the output stride (given,
    else from ``--arch``)."""
    inferred = _infer_backbone(state)
    arch_os = None
    arch = flags.get("arch")
    if isinstance(arch, str):
        match = _ARCH.search(arch.split(".")[-1])
        if match is None or match.group("trunk") not in _ARCH_TRUNKS:
            raise OfficialCheckpointError(f"hanet_fast.models: unsupported official --arch {arch!r}")
        if _ARCH_TRUNKS[match.group("trunk")] != inferred and backbone is None:
            raise OfficialCheckpointError(
                f"hanet_fast.models: the command's --arch {arch!r} means {_ARCH_TRUNKS[match.group('trunk')]} "
                f"but the weights are those of {inferred}"
            )
        arch_os = int(match.group("os")) if match.group("os") else 16
    backbone = backbone or inferred
    if output_stride is None:
        output_stride = arch_os
    if output_stride is None:
        raise OfficialCheckpointError(
            "hanet_fast.models: the output stride cannot be read from the weights (dilations have no parameters) and "
            "the checkpoint has no 'command' with --arch; pass output_stride=8, 16 or 32 (official *_OS8 "
            "architectures: 8, *_OS4: 4, *_OS32: 32, no suffix: 16)"
        )
    if output_stride not in OUTPUT_STRIDES:
        raise OfficialCheckpointError(f"hanet_fast.models: output stride {output_stride} is not supported {OUTPUT_STRIDES}")
    return backbone, output_stride


def _classes(state: Mapping[str, torch.Tensor], num_classes: int | None) -> int:
    """The number of classes of the classifier ``final2`` (checked against ``num_classes`` when given)."""
    if "final2.0.weight" not in state:
        raise OfficialCheckpointError("hanet_fast.models: the checkpoint has no classifier 'final2.0.weight'")
    classes = state["final2.0.weight"].shape[0]
    if num_classes is not None and num_classes != classes:
        raise OfficialCheckpointError(
            f"hanet_fast.models: num_classes={num_classes} but the checkpoint's classifier has {classes} classes"
        )
    return classes


def _hanet_configs(state: Mapping[str, torch.Tensor], raw_keys: set[str], flags: dict,
                   base: HANetConfig) -> list[HANetConfig | None]:
    """Each of the five HANet layers' configuration (None: absent), checked against ``--hanet``."""
    pf = flags.get("pos_rfactor")
    rows_from_command = 128 // pf if isinstance(pf, int) and pf > 0 else None
    common: dict[str, object] = {}
    if isinstance(flags.get("pooling"), str):
        common["pooling"] = "max" if flags["pooling"] == "max" else "avg"
    for name in ("dropout", "pos_noise"):
        if name in flags:
            common[name] = flags[name]
    configs = [_hanet_layer(state, raw_keys, k, flags, common, rows_from_command, base) for k in range(5)]
    hanet_flags = flags.get("hanet")
    if isinstance(hanet_flags, list) and len(hanet_flags) == 5:
        expected = tuple(int(v == 1) for v in hanet_flags)
        found = tuple(int(c is not None) for c in configs)
        if expected != found:
            raise OfficialCheckpointError(
                f"hanet_fast.models: the command's --hanet {hanet_flags} disagrees with the HANet layers in the "
                f"weights {list(found)}"
            )
    return configs


def _hanet_layer(state: Mapping[str, torch.Tensor], raw_keys: set[str], k: int, flags: dict, common: dict,
                 rows_from_command: int | None, base: HANetConfig) -> HANetConfig | None:
    """HANet layer ``k``'s configuration from its weights and the command line (None: no such layer)."""
    w1 = state.get(f"hanet{k}.conv1.0.weight")
    if w1 is None:
        return None
    hanet_set = flags.get("hanet_set") or []
    hanet_pos = flags.get("hanet_pos") or []
    mid, cin = w1.shape[0], w1.shape[1]
    num_convs = 3 if f"hanet{k}.conv3.0.weight" in state else 2
    last = state.get(f"hanet{k}.conv{num_convs}.0.weight")
    if last is None:
        raise OfficialCheckpointError(f"hanet_fast.models: hanet{k} has no last convolution weight")
    table = state.get(f"hanet{k}.pos_encoding.weight")
    injection = 1 if f"hanet{k}.pos_emb1d_1st.pos_layer.weight" in raw_keys else 2
    settings = dict(common)
    settings.update(num_convs=num_convs, kernel_size=int(last.shape[-1]),
                    reduction=_infer_reduction(cin, mid, hanet_set[1] if len(hanet_set) > 1 else None))
    if table is None:
        settings.update(pos_encoding=None, rows=rows_from_command or base.rows)
    else:
        rows = table.shape[0] - 1
        if rows_from_command is not None and rows_from_command != rows:
            raise OfficialCheckpointError(
                f"hanet_fast.models: --pos_rfactor {flags.get('pos_rfactor')} means {rows_from_command} rows but "
                f"hanet{k}'s table has {rows + 1} positions"
            )
        if len(hanet_pos) > 1:
            kind = "sinusoidal" if hanet_pos[1] == 1 else "learned"
        elif table.is_meta:
            kind = "sinusoidal"
        else:
            sinus = sinusoid_table(rows + 1, table.shape[1])
            kind = "sinusoidal" if torch.allclose(table.detach().float().cpu(), sinus, atol=1e-5) else "learned"
        settings.update(pos_encoding=kind, pos_injection=injection, rows=rows)
    if k == 4:
        settings["pooling"] = "max"
    return dataclasses.replace(base, **settings)


def read_official_state_dict(checkpoint: str | os.PathLike | Mapping, *, map_location: str | torch.device = "cpu",
                             weights_only: bool = True) -> dict[str, torch.Tensor]:
    """The weights of an official snapshot (``{'state_dict', ...}`` or a bare state dict, keys
    possibly under ``module.``; a file or the loaded object) under hanet_fast's key names, without
    building a network (:func:`load_official_checkpoint` builds one).

    Raises:
        FileNotFoundError: no such file.
        OfficialCheckpointError: not a state dict, or refused by ``weights_only``.
    """
    obj, what = _open(checkpoint, map_location, weights_only)
    return convert_official_state_dict(_split_checkpoint(obj, what)[0])


def _list(keys: Sequence[str], limit: int = 40) -> str:
    keys = list(keys)
    shown = "\n    ".join(keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n    {shown}{more}"


def load_official_checkpoint(
    checkpoint: str | os.PathLike | Mapping,
    *,
    backbone: str | None = None,
    output_stride: int | None = None,
    num_classes: int | None = None,
    hanet: HANetConfig | None = None,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
    name: str | None = None,
) -> DeepLabV3PlusHANet:
    """Build the hanet_fast network equivalent to an official HANet checkpoint and load it.

    Args:
        checkpoint: a file saved by the official code (a snapshot dict with ``'state_dict'``
            and usually ``'command'``, or a bare state dict; keys may start with ``module.``),
            or such an object already loaded.
        backbone, output_stride, num_classes, hanet: see :func:`infer_official_config`;
            ``output_stride`` is required when the checkpoint has no ``'command'``.
        map_location: passed to ``torch.load``.
        weights_only: ``torch.load``'s safe mode (numpy scalars, which official snapshots hold,
            are allowed); pass False only for files you trust.
        name: what the errors call an already loaded ``checkpoint`` (e.g. the file it came from).

    Returns:
        The network in eval mode, on the CPU (unless ``map_location`` put the weights elsewhere
        and you move it). In eval mode and fp32 its outputs equal the official network's for
        the same input and positions (``row_pos`` = image row / full image height, the
        official ``pos_h`` map).

    Raises:
        OfficialCheckpointError: unreadable file, configuration that cannot be inferred, or
            keys / shapes that do not match (all of them are listed).
    """
    obj, what = _open(checkpoint, map_location, weights_only, name)
    raw, command = _split_checkpoint(obj, what)
    try:
        config = infer_official_config(
            raw, command, backbone=backbone, output_stride=output_stride, num_classes=num_classes, hanet=hanet
        )
    except (OfficialCheckpointError, ValueError, TypeError) as err:
        # Name the file, and say that it is the file's settings that are wrong.
        text = str(err).removeprefix("hanet_fast.models: ")
        raise OfficialCheckpointError(f"hanet_fast.models: {what}: {text}") from err
    state = convert_official_state_dict(raw)
    model = DeepLabV3PlusHANet.from_config(config)
    own = model.state_dict()
    missing, unexpected, shapes = state_dict_differences(state, own)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    mismatched = [f"{k}: checkpoint {file} vs model {model}" for k, file, model in shapes]
    if unexpected or missing or mismatched:
        parts = [f"hanet_fast.models: {what} does not match the inferred network {config.backbone}, "
                 f"OS {config.output_stride}, {config.num_classes} classes, HANet layers {list(config.hanet_layers)}, "
                 f"aux {config.aux}:"]
        if unexpected:
            parts.append(f"  checkpoint keys with no counterpart (names after renaming to hanet_fast):{_list(unexpected)}")
        if missing:
            parts.append(f"  network keys missing from the checkpoint:{_list(missing)}")
        if mismatched:
            parts.append(f"  shape mismatches:{_list(mismatched)}")
        raise OfficialCheckpointError("\n".join(parts))
    merged = {k: state.get(k, v) for k, v in own.items()}
    model.load_state_dict(merged, strict=True)
    return model.eval()
