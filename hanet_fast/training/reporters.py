"""The built-in hooks that report a run: the console (progress bars or plain lines), TensorBoard
scalars and images, and the figures of the final report. :func:`default_hooks` installs them."""

from __future__ import annotations

import math
import os
import time
import warnings

import torch

from hanet_fast.models import HANET_LAYERS
from hanet_fast.ops import resolve_backend
from hanet_fast.training.hooks import Hook, StepResult
from hanet_fast.training.metrics import format_table
from hanet_fast.training.validation import ValidationResult, write_figures

__all__ = ["ConsoleReporter", "TensorBoardReporter", "FigureWriter", "tensorboard_writer", "default_hooks"]


def _say(text: str) -> None:
    print(text, flush=True)


class ConsoleReporter(Hook):
    """What a run is doing, on stdout: the setup, a tqdm bar of the iterations (unless
    ``no_progress``) with a bar of its own for each validation, the validation results and the
    final table. The bar's ETA and images/s leave validation time out."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress
        self.bar = self.val_bar = None
        self.t0 = self.val_t0 = 0.0

    def after_setup(self, trainer) -> None:
        cfg, net = trainer.config, trainer.net
        if trainer.resumed:
            changed = trainer.resume_changes
            _say(f"hanet_fast.train: resuming {cfg.resume} at iteration {trainer.start}"
                 + (f" with {', '.join(changed)}" if changed else ""))
        layers = [name for name, on in zip(HANET_LAYERS, net.config.hanet_layers) if on]
        backends = sorted({resolve_backend(m.backend, trainer.device) for m in net.hanet_modules.values()})
        hanet = f"HANet {'+'.join(layers)} on the {'/'.join(backends)} backend" if layers else "no HANet (baseline)"
        world = trainer.process.world
        _say(f"hanet_fast.train: {cfg.backbone} OS{cfg.output_stride}, {hanet}; device {trainer.device}"
             f"{f' x {world} processes' if world > 1 else ''}{f', torch.compile ({cfg.compile})' if cfg.compile else ''}\n"
             f"  data: {cfg.dataset}, {len(trainer.train_set)} training / {len(trainer.val_set)} validation images; "
             f"{cfg.iters} iterations of batch {cfg.batch_size}{f', resuming at {trainer.start}' if trainer.start else ''}\n"
             f"  run folder: {cfg.out or 'a new folder under runs/ (created once the data are checked)'}")

    def before_train(self, trainer) -> None:
        _say(f"hanet_fast.train: writing to {trainer.out} (TensorBoard: tensorboard --logdir "
             f"{os.path.join(trainer.out, 'tb')})")
        if self.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=trainer.stop, initial=trainer.start, desc="train", dynamic_ncols=True,
                            mininterval=1.0)
        self.t0 = time.time()

    def after_step(self, trainer, step: StepResult) -> None:
        if self.bar is not None:
            done = (step.iteration - trainer.start) * trainer.config.batch_size * trainer.process.world
            self.bar.set_postfix(loss=f"{step.loss:.3f}", lr=f"{step.lrs['main']:.2e}",
                                 img_s=f"{done / max(time.time() - self.t0, 1e-9):.1f}", refresh=False)
            self.bar.update(1)

    def before_validation(self, trainer, images: int, final: bool) -> None:
        self.val_t0 = time.time()
        if final:
            _say(f"hanet_fast.train: final validation on {images} images")
        if self.progress:
            from tqdm import tqdm
            self.val_bar = tqdm(total=images, desc="validate", unit="img", dynamic_ncols=True, mininterval=1.0,
                                position=0 if self.bar is None else 1, leave=False)

    def after_validation_batch(self, trainer, images: int) -> None:
        if self.val_bar is not None:
            self.val_bar.update(images)

    def after_validation(self, trainer, result: ValidationResult) -> None:
        if self.val_bar is not None:
            self.val_bar.close()
            self.val_bar = None
        spent = time.time() - self.val_t0
        self.t0 += spent  # the images/s and the ETA count training time only
        if self.bar is not None:
            self.bar.start_t += spent
            self.bar.last_print_t += spent
        if result.final:
            cfg = trainer.config
            split = "val" if cfg.dataset == "synthetic" else cfg.val_split
            _say(f"\nValidation ({cfg.dataset} {split}, {result.images} images) after {result.iteration} iterations:")
            _say(format_table(result.ious, result.miou, result.pixel_acc, trainer.labels.class_names))
            return
        msg = f"iteration {result.iteration}: val mIoU {100 * result.miou:.2f}%"
        self.bar.write(msg) if self.bar is not None else _say(msg)

    def after_loop(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        _say(f"hanet_fast.train: writing the checkpoint of iteration {trainer.iteration}")

    def after_train(self, trainer, metrics: dict) -> None:
        if not metrics:
            _say(f"hanet_fast.train: stopped after iteration {trainer.iteration} of {trainer.config.iters}; continue "
                 f"with --resume {os.path.join(trainer.out, 'checkpoint.pt')}")
        _say(f"run folder: {trainer.out}")


class _NullWriter:
    def add_scalar(self, *a, **k): pass
    def add_image(self, *a, **k): pass
    def flush(self): pass
    def close(self): pass


def tensorboard_writer(out: str, purge_step: int | None = None):
    """A SummaryWriter into ``out/tb`` (a do-nothing writer, with a warning, without tensorboard).
    ``purge_step``: events a resumed run logged after its checkpoint are hidden."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("hanet_fast.train: tensorboard is not installed (pip install tensorboard): no TensorBoard logs")
        return _NullWriter()
    return SummaryWriter(os.path.join(out, "tb"), purge_step=purge_step)


class TensorBoardReporter(Hook):
    """TensorBoard in ``<run folder>/tb``: every ``log_every`` iterations the losses, learning
    rates and images/s; each validation's mIoU and pixel accuracy; the final per-class IoUs."""

    def __init__(self) -> None:
        self.writer = _NullWriter()
        self.t_last, self.n_last = 0.0, 0

    def before_train(self, trainer) -> None:
        # Events the interrupted run logged after its checkpoint are hidden; they are logged again.
        self.writer = tensorboard_writer(trainer.out, trainer.start + 1 if trainer.resumed else None)
        self.t_last, self.n_last = time.time(), 0

    def after_step(self, trainer, step: StepResult) -> None:
        self.n_last += step.images
        if step.iteration % trainer.config.log_every and step.iteration != trainer.stop:
            return
        w, it = self.writer, step.iteration
        w.add_scalar("train/loss", step.loss, it)
        for k, v in step.parts.items():
            w.add_scalar(f"train/loss_{k}", v, it)
        for k, v in step.lrs.items():
            w.add_scalar(f"train/lr_{k}", v, it)
        w.add_scalar("train/images_per_s", self.n_last / max(time.time() - self.t_last, 1e-9), it)
        self.t_last, self.n_last = time.time(), 0

    def after_validation(self, trainer, result: ValidationResult) -> None:
        self.writer.add_scalar("val/mIoU", result.miou, result.iteration)
        self.writer.add_scalar("val/pixel_acc", result.pixel_acc, result.iteration)
        if result.final:
            for name, v in zip(trainer.labels.class_names, result.ious):
                if not math.isnan(v):
                    self.writer.add_scalar(f"val_iou/{name}", v, result.iteration)

    def after_train(self, trainer, metrics: dict) -> None:
        self.writer.close()


class FigureWriter(Hook):
    """After the final validation: ``predictions.png`` and ``attention.png`` in the run folder
    (see :func:`~hanet_fast.training.validation.write_figures`), the predictions also in
    TensorBoard when ``tensorboard`` is given."""

    def __init__(self, tensorboard: TensorBoardReporter | None = None) -> None:
        self.tensorboard = tensorboard

    def after_validation(self, trainer, result: ValidationResult) -> None:
        if not result.final:
            return
        _say(f"hanet_fast.train: writing predictions.png and attention.png to {trainer.out}")
        grid = write_figures(trainer.model, trainer.val_set, trainer.device, trainer.config, trainer.out)
        if self.tensorboard is not None:
            self.tensorboard.writer.add_image("val/predictions", torch.from_numpy(grid).permute(2, 0, 1),
                                              result.iteration)


def default_hooks(no_progress: bool = False) -> list[Hook]:
    """The reporters of a run on rank 0: TensorBoard, the figures, the console (in that order, so
    that the final table comes after the figures are written)."""
    tensorboard = TensorBoardReporter()
    return [tensorboard, FigureWriter(tensorboard), ConsoleReporter(progress=not no_progress)]
