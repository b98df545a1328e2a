"""The settings of a training run: :class:`TrainConfig`, one field per flag of
``python -m hanet_fast.train`` (named as the flag's argparse destination, with its default), and
the checks that refuse a value which would crash a run or silently misbehave."""

from __future__ import annotations

import dataclasses
import math
import os

from hanet_fast._cli import resolve_device
from hanet_fast.data import DATASETS, NUM_CLASSES, TrainTransform
from hanet_fast.data.sampling import parse_class_list
from hanet_fast.training.presets import DEFAULT_PRESET, PRESETS

__all__ = ["TrainConfig", "ConfigError", "DATASET_NAMES", "AMP_CHOICES", "OUTPUT_STRIDES"]

DATASET_NAMES = tuple(DATASETS)  # the data sets hanet_fast.data builds by name
AMP_CHOICES = ("off", "bf16", "fp16")
OUTPUT_STRIDES = (4, 8, 16, 32)
_D = PRESETS[DEFAULT_PRESET]  # the defaults of the settings a preset sets


class ConfigError(ValueError):
    """A bad :class:`TrainConfig` value. The message names the field; ``{field}`` placeholders in
    ``template`` become the field names (``str(error)``) or, on the command line, the flags
    (:meth:`text` with a naming function)."""

    def __init__(self, template: str, *fields: str) -> None:
        self.template, self.fields = template, fields
        super().__init__(self.text(lambda field: field))

    def text(self, name) -> str:
        """The message with each field called ``name(field)``."""
        out = self.template
        for field in self.fields:
            out = out.replace("{" + field + "}", name(field))
        return out


def _require(ok: bool, template: str, *fields: str) -> None:
    if not ok:
        raise ConfigError(template, *fields)


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; see ``python -m hanet_fast.train --help`` for each one
    (field ``batch_size`` is flag ``--batch-size``). The defaults are the default preset's
    (:data:`~hanet_fast.training.presets.DEFAULT_PRESET`); :meth:`from_preset` gives another.
    Construction checks the values (:meth:`validate`).

    Raises:
        ConfigError: (a ``ValueError``) a bad value; the message names the field.
    """

    # run
    preset: str = DEFAULT_PRESET
    out: str | None = None
    resume: str | None = None
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    workers: int = 1
    no_progress: bool = False
    stop_after: int = 0
    deterministic: bool = False
    # data
    dataset: str = _D["dataset"]
    data_root: str | None = None
    train_split: str = _D["train_split"]
    val_split: str = "val"
    synthetic_size: tuple[int, int] = _D["synthetic_size"]
    synthetic_train: int = _D["synthetic_train"]
    synthetic_val: int = _D["synthetic_val"]
    data_seed: int = 0
    crop_size: tuple[int, int] = _D["crop_size"]
    scale_min: float = _D["scale_min"]
    scale_max: float = _D["scale_max"]
    color_jitter: float = _D["color_jitter"]
    blur: float = _D["blur"]
    class_uniform_pct: float = _D["class_uniform_pct"]
    class_uniform_tile: int = _D["class_uniform_tile"]
    cache_dir: str | None = None
    val_size: tuple[int, int] | None = None
    val_batch_size: int = 0
    val_limit: int = 0
    coarse_boost_classes: str = _D["coarse_boost_classes"]
    max_cu_epoch: int = _D["max_cu_epoch"]
    # model
    backbone: str = _D["backbone"]
    output_stride: int = _D["output_stride"]
    hanet_layers: str = _D["hanet_layers"]
    baseline: bool = False
    hanet_rows: int = _D["hanet_rows"]
    hanet_reduction: int = _D["hanet_reduction"]
    hanet_pos_injection: int = _D["hanet_pos_injection"]
    hanet_pos_noise: float = _D["hanet_pos_noise"]
    hanet_dropout: float = _D["hanet_dropout"]
    no_pos_encoding: bool = False
    pretrained_backbone: str = _D["pretrained_backbone"]
    no_aux: bool = _D["no_aux"]
    init_from: str | None = _D["init_from"]
    # optimisation
    iters: int = _D["iters"]
    batch_size: int = _D["batch_size"]
    lr: float = _D["lr"]
    hanet_lr: float = _D["hanet_lr"]
    poly_power: float = _D["poly_power"]
    hanet_poly_power: float = _D["hanet_poly_power"]
    momentum: float = _D["momentum"]
    weight_decay: float = _D["weight_decay"]
    hanet_weight_decay: float = _D["hanet_weight_decay"]
    aux_weight: float = _D["aux_weight"]
    cls_wt_loss: bool = _D["cls_wt_loss"]
    img_wt_loss: bool = _D["img_wt_loss"]
    batch_weighting: bool = False
    wt_bound: float = 1.0
    amp: str = "off"
    channels_last: bool = False
    compile: str | None = None
    sync_bn: bool = _D["sync_bn"]
    # logging
    log_every: int = 10
    val_every: int | str = _D["val_every"]  # iterations, or "epoch"
    ckpt_every: int = _D["ckpt_every"]
    num_vis: int = 4

    def __post_init__(self) -> None:
        self.crop_size = tuple(self.crop_size)
        self.synthetic_size = tuple(self.synthetic_size)
        if self.val_size is not None:
            self.val_size = tuple(self.val_size)
        if self.baseline:  # no HANet, whatever the layers say
            self.hanet_layers = "0,0,0,0,0"
        self.validate()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TrainConfig:
        """The preset ``name`` (see :data:`~hanet_fast.training.presets.PRESETS`) with ``overrides``
        (field names) applied.

        Raises:
            ConfigError: an unknown preset (naming the known ones) or a bad value.
        """
        _require(name in PRESETS, f"{{preset}} must be one of {', '.join(sorted(PRESETS))}, got {name!r}", "preset")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"TrainConfig.from_preset: unknown settings {', '.join(unknown)}")
        return cls(**{"preset": name, **PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        """The settings as plain JSON-able values (tuples as lists): what checkpoints and
        ``args.json`` record."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        """Raise :class:`ConfigError` (naming the field) for a value that would crash a run or
        silently misbehave."""
        self._validate_choices()
        self._validate_loss()
        try:
            flags = [int(v) for v in str(self.hanet_layers).split(",")]
        except ValueError:
            flags = []
        _require(len(flags) == 5 and set(flags) <= {0, 1},
                 f"{{hanet_layers}} must be five comma-separated 0/1 flags, got {self.hanet_layers!r}", "hanet_layers")
        _require(self.dataset == "synthetic" or bool(self.data_root),
                 f"{{data_root}} is required for {{dataset}} {self.dataset}", "data_root", "dataset")
        _require(self.iters >= 1 and self.batch_size >= 1, "{iters} and {batch_size} must be positive",
                 "iters", "batch_size")
        self._validate_values()
        self._validate_device_batch()

    def _validate_choices(self) -> None:
        for field, choices in (("preset", tuple(PRESETS)), ("dataset", DATASET_NAMES), ("amp", AMP_CHOICES),
                               ("output_stride", OUTPUT_STRIDES), ("hanet_pos_injection", (1, 2))):
            value = getattr(self, field)
            _require(value in choices, f"{{{field}}} must be one of {', '.join(map(str, choices))}, got {value!r}",
                     field)

    def _validate_loss(self) -> None:
        _require(math.isfinite(self.wt_bound) and self.wt_bound >= 0,
                 f"{{wt_bound}} must be a finite number >= 0, got {self.wt_bound}", "wt_bound")
        _require(self.img_wt_loss or not (self.batch_weighting or self.wt_bound != 1.0),
                 "{batch_weighting} and {wt_bound} apply to {img_wt_loss} only", "batch_weighting", "wt_bound",
                 "img_wt_loss")

    def _validate_values(self) -> None:
        # NaN compares false with everything: "not >= 0" refuses it with the negatives.
        for key in ("lr", "hanet_lr", "momentum", "weight_decay", "hanet_weight_decay", "poly_power",
                    "hanet_poly_power", "aux_weight"):
            value = getattr(self, key)
            _require(value >= 0 and math.isfinite(value), f"{{{key}}} must be a finite number >= 0, got {value}", key)
        _require(self.log_every >= 1, f"{{log_every}} must be at least 1, got {self.log_every}", "log_every")
        _require(self.val_every == "epoch" or (isinstance(self.val_every, int) and self.val_every >= 0),
                 f"{{val_every}} must be 'epoch' or a number of iterations >= 0, got {self.val_every!r}", "val_every")
        for key in ("ckpt_every", "val_limit", "stop_after", "threads", "workers", "val_batch_size",
                    "num_vis", "class_uniform_tile"):
            _require(getattr(self, key) >= 0, f"{{{key}}} must not be negative, got {getattr(self, key)}", key)
        _require(0 <= self.class_uniform_pct <= 1,
                 f"{{class_uniform_pct}} must be in [0, 1], got {self.class_uniform_pct}", "class_uniform_pct")
        _require(0 < self.scale_min <= self.scale_max < math.inf,
                 f"{{scale_min}} and {{scale_max}} must satisfy 0 < min <= max, got {self.scale_min} and "
                 f"{self.scale_max}", "scale_min", "scale_max")
        try:  # the transform owns the valid ranges of its settings
            TrainTransform(self.crop_size, (self.scale_min, self.scale_max), 0.5, self.color_jitter, self.blur)
        except ValueError as e:
            raise ConfigError(f"{{color_jitter}} / {{blur}}: {e}", "color_jitter", "blur") from None
        _require(self.max_cu_epoch >= 0, f"{{max_cu_epoch}} must not be negative, got {self.max_cu_epoch}",
                 "max_cu_epoch")
        if self.coarse_boost_classes:
            _require(self.dataset == "cityscapes" and self.class_uniform_pct > 0,
                     "{coarse_boost_classes} needs {dataset} cityscapes and {class_uniform_pct} > 0 (coarse crops are "
                     "class-uniform samples)", "coarse_boost_classes", "dataset", "class_uniform_pct")
            try:
                parse_class_list(self.coarse_boost_classes, NUM_CLASSES, "{coarse_boost_classes}")
            except ValueError as e:
                raise ConfigError(str(e).removeprefix("hanet_fast.data: "), "coarse_boost_classes") from None
        _require(self.dataset != "synthetic" or min(self.synthetic_train, self.synthetic_val) >= 1,
                 "{synthetic_train} and {synthetic_val} must be positive", "synthetic_train", "synthetic_val")

    def _validate_device_batch(self) -> None:
        try:
            device = resolve_device(self.device)
        except ValueError as e:
            raise ConfigError(str(e), "device") from None
        # BatchNorm in training needs two values per channel; after ASPP's image pooling there is
        # one per image, so one image per process fails unless SyncBatchNorm pools the processes'
        # batches.
        sync = int(os.environ.get("WORLD_SIZE", "1")) > 1 and self.sync_bn and device.type == "cuda"
        _require(self.batch_size >= 2 or sync,
                 "{batch_size} must be at least 2 per process: the BatchNorm after ASPP's image pooling sees one "
                 "value per channel and image, and cannot train on a single one (or use SyncBatchNorm across GPUs "
                 "with torchrun)", "batch_size")
