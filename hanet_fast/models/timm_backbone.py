"""Any timm backbone as the trunk of DeepLabv3+ with HANet: ``backbone="timm:NAME"``.

timm (PyTorch Image Models, ``pip install -e ".[timm]"``) builds a network's multi-scale
features with ``features_only=True`` and describes them in ``feature_info`` (channels and
stride of each). The DeepLabv3+ wiring follows from those strides (DESIGN §4, with timm's
features in place of torchvision's stages):

- the stride-4 feature is the decoder's low-level skip (``layer1`` of the torchvision trunks);
- the last feature feeds ASPP and is gated by HANet L1 (stage 4);
- the feature before it is stage 3: the auxiliary head's input and HANet L1's ``x_low``.

Only those three features are built and returned (timm's ``out_indices``), so the trunk has no
module the network does not use. Output stride 8 / 16 comes from timm's ``output_stride``
(dilation), where the model family supports it; :func:`timm_spec` lists the strides a model can
be built at. Models whose input size is fixed (Swin and other windowed or position-table
transformers) are refused: segmentation trains on crops and evaluates on full images.

``NAME`` may carry a pretrained tag (``timm:convnext_atto.d2_in1k``); the tag only chooses
the weights of ``pretrained_backbone="imagenet"``.
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
from dataclasses import dataclass

import torch
import torch.nn as nn

from hanet_fast._messages import one_line
from hanet_fast.models.backbones import OUTPUT_STRIDES, BackboneSpec, check_state_dict_fits

__all__ = ["TIMM_PREFIX", "TimmBackboneSpec", "TimmUnavailableError", "build_timm_trunk", "convert_sync_batchnorm",
           "is_timm_backbone", "timm_spec"]

#: The prefix that selects a timm backbone: ``backbone="timm:convnext_atto"``.
TIMM_PREFIX = "timm:"

#: Seconds the connectivity check before a download may take.
_PROBE_TIMEOUT_S = 5.0

#: The stride of the decoder's low-level skip.
_LOW_STRIDE = 4


class TimmUnavailableError(ImportError, ValueError):
    """A ``timm:`` backbone was asked for but timm is not installed (a ``ValueError`` too, so
    that every command reports it as the bad ``--backbone`` it is)."""


@dataclass(frozen=True)
class TimmBackboneSpec(BackboneSpec):
    """A :class:`BackboneSpec` of a timm backbone (``family="timm"``, ``low_stride=4``).

    Attributes:
        feature_indices: the indices of timm's features used as (low-level skip, stage 3,
            stage 4), passed to timm as ``out_indices``.
        native_stride: the output stride the model has undilated (built without timm's
            ``output_stride`` argument, which some families do not take).
    """

    feature_indices: tuple[int, int, int] = (0, 1, 2)
    native_stride: int = 32


def is_timm_backbone(backbone: object) -> bool:
    """Whether ``backbone`` names a timm backbone (``"timm:NAME"``)."""
    return isinstance(backbone, str) and backbone.startswith(TIMM_PREFIX)


def _timm():
    try:
        import timm
    except ImportError as err:
        raise TimmUnavailableError(
            'hanet_fast.models: "timm:" backbones need timm, which is not installed: pip install -e ".[timm]"'
        ) from err
    return timm


def _model_name(backbone: str) -> str:
    name = backbone[len(TIMM_PREFIX):]
    timm = _timm()
    if not name or not timm.is_model(name):
        raise ValueError(f"hanet_fast.models: backbone {backbone!r}: timm has no model {name!r} "
                         "(timm.list_models() lists them)")
    return name


def _features_model(name: str, output_stride: int | None, **kwargs) -> nn.Module:
    """timm's features-only network (``output_stride`` None: the native stride)."""
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    return _timm().create_model(name, features_only=True, **kwargs)


@functools.lru_cache(maxsize=None)
def timm_spec(backbone: str) -> TimmBackboneSpec:
    """The channels, feature indices and output strides of timm backbone ``backbone``.

    The model is built on the ``meta`` device (no memory, no weights) at each candidate output
    stride; a stride counts when timm builds it and its last feature really has that stride.

    Raises:
        ValueError: timm has no such model, its input size is fixed, it has no stride-4 feature
            followed by two more, or it cannot give features at all (one line saying why).
        TimmUnavailableError: timm is not installed.
    """
    name = _model_name(backbone)
    cfg = _timm().get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        raise ValueError(
            f"hanet_fast.models: backbone {backbone!r} takes only a fixed input size ({cfg.input_size[1]}x"
            f"{cfg.input_size[2]}, timm's fixed_input_size): segmentation trains on crops and evaluates on full "
            "images of other sizes; choose a convolutional or size-agnostic model (e.g. timm:convnext_tiny, "
            "timm:efficientnet_b0, timm:pvt_v2_b0)")
    try:
        with torch.device("meta"):
            info = _features_model(name, None).feature_info
    except Exception as err:  # timm says why in its own words (no features_only support, ...)
        raise ValueError(f"hanet_fast.models: backbone {backbone!r}: timm cannot build its features "
                         f"({one_line(err, 300, with_type=True)})") from err
    strides, channels = list(info.reduction()), list(info.channels())
    if _LOW_STRIDE not in strides or strides.index(_LOW_STRIDE) > len(strides) - 3:
        raise ValueError(
            f"hanet_fast.models: backbone {backbone!r} has features at strides {strides}: DeepLabv3+ needs a "
            f"stride-{_LOW_STRIDE} feature (the decoder's low-level skip) followed by at least two more (stage 3, "
            "stage 4)")
    indices = (strides.index(_LOW_STRIDE), len(strides) - 2, len(strides) - 1)
    return TimmBackboneSpec(
        backbone, channels[indices[0]], _LOW_STRIDE, channels[indices[1]], channels[indices[2]], "timm",
        _output_strides(name, indices, strides[-1]), indices, strides[-1])


def _output_strides(name: str, indices: tuple[int, int, int], native: int) -> tuple[int, ...]:
    found = []
    for stride in OUTPUT_STRIDES:
        if stride == native:
            found.append(stride)
            continue
        try:
            with torch.device("meta"):
                reduction = _features_model(name, stride, out_indices=indices).feature_info.reduction()
        except Exception:  # the family takes no output_stride, or not this one
            continue
        if reduction[0] == _LOW_STRIDE and reduction[-1] == stride:
            found.append(stride)
    return tuple(found)


def build_timm_trunk(
    backbone: str, output_stride: int = 8, pretrained: str | os.PathLike | None = None
) -> nn.Module:
    """timm's features-only network of ``backbone`` returning ``[low, stage3, stage4]``.

    Args:
        backbone: ``"timm:NAME"`` (``NAME`` optionally with a pretrained tag).
        output_stride: one of ``timm_spec(backbone).output_strides``.
        pretrained: None (random init, nothing downloaded), ``"imagenet"`` (timm's default
            pretrained weights of ``NAME``, or of its tag: from the Hugging Face hub cache when
            there, else downloaded; offline a ``RuntimeError`` names the cache folder and the
            local-file alternative) or the path of a local ``.safetensors`` / ``.pth`` file
            holding the timm classification network's state dict (timm's own loader: EMA
            weights preferred, a ``module.`` prefix removed, no network).
    """
    spec = timm_spec(backbone)
    if isinstance(output_stride, bool) or output_stride not in spec.output_strides:
        raise ValueError(f"hanet_fast.models: output_stride of {backbone} must be one of {spec.output_strides} "
                         f"(the strides timm builds it at), got {output_stride!r}")
    name = _model_name(backbone)
    kwargs: dict = {"out_indices": spec.feature_indices}
    if pretrained is not None:
        state = _checked_state_dict(backbone, name, _weights_file(backbone, name, pretrained))
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    return _features_model(name, None if output_stride == spec.native_stride else output_stride, **kwargs)


def _checked_state_dict(backbone: str, name: str, path: str) -> dict[str, torch.Tensor]:
    """The classification network's state dict in ``path``, checked key by key and shape by
    shape against the network (timm itself loads features-only networks non-strictly and
    would leave a wrong file's layers at random init with a log message)."""
    timm = _timm()
    try:
        state = timm.models.load_state_dict(path)
    except Exception as err:  # not a weights file, corrupt, objects weights_only refuses
        raise ValueError(f"hanet_fast.models: pretrained_backbone {path!r} cannot be read as a .safetensors / "
                         f".pth state dict: {one_line(err, 300, with_type=True)}") from err
    with torch.device("meta"):
        net = timm.create_model(name)
    heads = tuple(f"{c}." for c in _as_tuple(net.pretrained_cfg.get("classifier")))

    def compared(key: str) -> bool:  # the classifier is not used; BN counters are optional
        return not key.startswith(heads) and not key.endswith("num_batches_tracked")

    check_state_dict_fits({k: v for k, v in state.items() if compared(k)},
                          {k: v for k, v in net.state_dict().items() if compared(k)},
                          f"pretrained_backbone {path!r} ({backbone})")
    return state


def _as_tuple(value: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if value is None else (value,) if isinstance(value, str) else tuple(value)


def _weights_file(backbone: str, name: str, pretrained: str | os.PathLike) -> str:
    """The local file to load: ``pretrained`` itself, or timm's default weights from the cache
    (downloaded first when online)."""
    if isinstance(pretrained, str) and pretrained == "imagenet":
        return _hub_weights(backbone, name)
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"hanet_fast.models: pretrained_backbone must be None, 'imagenet' or a path, "
                        f"got {type(pretrained).__name__}")
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hanet_fast.models: pretrained_backbone must be None, 'imagenet' or the path of an "
                                f"existing .safetensors / .pth file, got {path!r}")
    return path


def _hub_weights(backbone: str, name: str) -> str:
    """timm's default pretrained weights of ``name`` as a file in the Hugging Face hub cache."""
    cfg = _timm().get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"hanet_fast.models: timm has no pretrained weights on the Hugging Face hub for {backbone}; "
                         "pass pretrained_backbone=PATH to a local .safetensors / .pth file")
    import huggingface_hub
    from huggingface_hub import constants

    files = ("model.safetensors", "pytorch_model.bin") + ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else ())
    for filename in files:
        cached = huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(cached, str):
            return cached
    problem = _offline_reason(constants.ENDPOINT)
    if problem is None:
        try:
            return _download(huggingface_hub, cfg.hf_hub_id, files)
        except Exception as err:  # network, proxy, missing file: one clear message
            problem = f"the download failed ({one_line(err, 300, with_type=True)})"
    raise RuntimeError(
        f"hanet_fast.models: cannot get timm's pretrained weights of {backbone} ({cfg.hf_hub_id} on the Hugging Face "
        f"hub): {problem}. Download them on a machine that is online (huggingface-cli download {cfg.hf_hub_id}) and "
        f"copy them into the hub cache {constants.HF_HUB_CACHE}, or pass pretrained_backbone=PATH to the "
        ".safetensors / .pth file")


def _offline_reason(endpoint: str) -> str | None:
    """Why the hub cannot be reached (None: it can), decided in seconds rather than after the
    minute of retries a download attempt takes offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"{url.hostname} cannot be reached ({one_line(err, 300)})"
    return None


def _download(huggingface_hub, repo_id: str, files: tuple[str, ...]) -> str:
    from huggingface_hub.utils import EntryNotFoundError

    for filename in files[:-1]:
        try:
            return huggingface_hub.hf_hub_download(repo_id, filename)
        except EntryNotFoundError:  # this repository has the next format only
            continue
    return huggingface_hub.hf_hub_download(repo_id, files[-1])


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm turned into SyncBatchNorm (for DDP), for any backbone.

    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` turns timm's ``BatchNormAct2d`` (BN with
    its activation fused in, used by EfficientNet, RegNet, ...) into a plain SyncBatchNorm and so
    silently drops the activation; timm's own converter keeps it. Networks without timm modules
    go through torch's converter.
    """
    if any(type(m).__module__.startswith("timm.") for m in model.modules()):
        return _timm().layers.convert_sync_batchnorm(model)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
