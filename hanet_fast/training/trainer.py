"""The training engine: :class:`Trainer` runs what a :class:`~hanet_fast.training.TrainConfig`
describes, in small steps (setup, data, model and optimiser, resume, one training step,
validation, checkpoint, final report), and tells its hooks (:mod:`hanet_fast.training.hooks`)
what happens; it never prints progress, parses ``sys.argv`` or exits.

::

    from hanet_fast.training import TrainConfig, Trainer
    metrics = Trainer(TrainConfig(iters=50, out="runs/try")).fit()

Under ``torchrun`` every process runs the same code (DDP; the process group is joined and left
by :meth:`Trainer.fit` unless the caller made it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from hanet_fast import _io
from hanet_fast._cli import compile_model
from hanet_fast.inference import amp_context
from hanet_fast.models import convert_sync_batchnorm
from hanet_fast.training import checkpoint as ckpt_io
from hanet_fast.training.config import TrainConfig
from hanet_fast.training.data import build_datasets, class_statistics, train_loader
from hanet_fast.training.best import BestCheckpoint
from hanet_fast.training.errors import RunError
from hanet_fast.training.init_from import init_from
from hanet_fast.training.hooks import Hook, StepResult
from hanet_fast.training.losses import segmentation_loss
from hanet_fast.training.model import build_model, build_optimization
from hanet_fast.training.reporters import default_hooks
from hanet_fast.training.resume import load_checkpoint, restore, resumed_config, run_folder_of
from hanet_fast.training.run_folder import check_cache_dir, check_out_folder, prepare_run_folder
from hanet_fast.training.runtime import current_process, init_process_group, rng_state, run_device, set_threads
from hanet_fast.training.validation import ValidationResult, unwrap, validate, validation_size

__all__ = ["Trainer"]


class Trainer:
    """Trains the network ``config`` describes; :meth:`fit` runs it.

    Args:
        config: the run's settings (checked again here).
        hooks: extra :class:`~hanet_fast.training.hooks.Hook` objects, called after the built-in
            reporters (console, TensorBoard, figures; rank 0 only, unless ``reporters=False``).
        given: with ``config.resume``, the settings the caller chose explicitly: those that
            differ from the checkpoint's are refused unless a resume may change them
            (:data:`~hanet_fast.training.resume.RESUME_MUTABLE`). None: only the mutable ones
            count as chosen (the others are taken from the checkpoint).
        reporters: install the built-in reporters.
    """

    def __init__(self, config: TrainConfig, hooks: Iterable[Hook] = (), *, given: set[str] | None = None,
                 reporters: bool = True) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer: config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.given = given
        self.extra_hooks = list(hooks)
        self.reporters = reporters
        self.hooks: list[Hook] = []
        self.iteration = self.start = self.stop = 0
        self.resumed = False
        self.resume_changes: list[str] = []
        self.out: str | None = None
        #: ``(path, iteration)`` of the newest checkpoint of this run (None before the first one).
        self.last_checkpoint: tuple[str, int] | None = None
        #: ``{"iteration", "mIoU"}`` of the best validation so far (``best.pt``; None before one).
        self.best: dict | None = None
        self._claim = None

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Run the training; returns the final metrics (``iteration``, ``mIoU``, ``pixel_acc``,
        ``iou`` per class, ``train_seconds``, ``world_size``, ``device``), as written to
        ``metrics.json``, or ``{}`` when ``stop_after`` ended it early (or on ranks other than 0).

        Raises:
            RunError: a bad setting, run folder or checkpoint, or a failed checkpoint write.
            hanet_fast.data.DatasetError: unreadable or inconsistent data.
        """
        self.config = dataclasses.replace(self.config)  # the run's own copy: the caller's stays as given
        self.process = current_process()
        self.device = run_device(self.config.device, self.process.local_rank)
        created_group = init_process_group(self.process, self.device)
        try:
            state = self._setup()
            self._build(state)
            self._call("after_setup")
            self._prepare_run()
            self._call("before_train")
            self._train_loop()
            return self._finish()
        finally:
            if self._claim is not None:
                self._claim.release()
            if created_group and dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()

    def _setup(self) -> dict | None:
        """Resume state and settings, run folder checks, threads; nothing is written yet."""
        cfg, state = self.config, None
        self.seconds_before = 0.0  # training time of the run before this resume
        if cfg.resume:
            state = load_checkpoint(cfg.resume)
            cfg, self.resume_changes = resumed_config(cfg, state["args"], int(state["iteration"]), self.given)
            self.config, self.resumed = cfg, True
            self.seconds_before = float(state.get("train_seconds", 0.0))
            run_dir = run_folder_of(cfg.resume)
            self.last_checkpoint = (os.path.join(run_dir, "checkpoint.pt") if os.path.isdir(cfg.resume)
                                    else cfg.resume, int(state["iteration"]))
            if cfg.out is None:
                cfg.out = run_dir
            elif os.path.realpath(cfg.out) != os.path.realpath(run_dir):
                check_out_folder(cfg.out, cfg.overwrite)
        elif cfg.out is not None:
            check_out_folder(cfg.out, cfg.overwrite)
        if cfg.class_uniform_pct > 0:
            check_cache_dir(cfg.cache_dir)
        set_threads(cfg.threads, state.get("threads") if state is not None else None,
                    self.given is not None and "threads" not in self.given, self.process.main)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        if self.process.world > 1:  # every rank has checked the run folder before rank 0 writes into it
            dist.barrier()
        return state

    def _build(self, state: dict | None) -> None:
        """Data sets, network, optimiser, schedule, scaler (restored from ``state`` on resume), DDP."""
        cfg, process = self.config, self.process
        torch.manual_seed(cfg.seed)
        try:
            self.train_set, self.val_set = build_datasets(cfg)
        except ValueError as e:
            raise RunError(str(e)) from None
        #: the classes of the run (names and colours), stored in every checkpoint
        self.labels = self.train_set.labels
        try:
            model = build_model(cfg, self.train_set.labels.num_classes).to(self.device)
        except (ValueError, FileNotFoundError) as e:  # an unknown backbone, a missing weights file
            raise RunError(str(e)) from None
        if cfg.init_from and state is None:  # a resume restores the whole run instead
            self._init_from(model)
        if process.world > 1:  # same initial weights everywhere, then a different dropout / jitter stream per rank
            torch.manual_seed(cfg.seed + 1000003 * process.rank)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_model(model, cfg.compile)
        self.optimizer, self.scheduler, self.scaler = build_optimization(cfg, model, self.device)
        if state is not None:
            self.start = restore(state, model, self.optimizer, self.scheduler, self.scaler, process.rank)
            self._check_training_set(state)
        self.iteration = self.start
        self.stop = min(cfg.iters, cfg.stop_after) if cfg.stop_after else cfg.iters
        self.model = self._distributed(model)
        self.net = unwrap(self.model)
        self.hooks = ((default_hooks(cfg.no_progress) if self.reporters and process.main else []) + [BestCheckpoint()]
                      + self.extra_hooks)

    def _init_from(self, model: nn.Module) -> None:
        """``--init-from``: every tensor whose name and shape match (the same on every rank: each
        process reads the file); rank 0 prints which ones kept their initialisation."""
        try:
            report = init_from(model, self.config.init_from)
        except (ValueError, FileNotFoundError) as e:
            raise RunError(f"--init-from: {str(e).removeprefix('hanet_fast.training: ')}") from None
        if self.process.main:
            print(f"hanet_fast.train: {report.summary()}", file=sys.stderr)

    def _distributed(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel under torchrun (SyncBatchNorm on GPUs with ``sync_bn``)."""
        if self.process.world == 1:
            return model
        if self.config.sync_bn and self.device.type == "cuda":
            model = convert_sync_batchnorm(model)  # keeps the activations timm fuses into BatchNorm
        elif self.config.sync_bn and self.process.main:
            print("hanet_fast.train: SyncBatchNorm needs GPUs; using per-process BatchNorm on CPU", file=sys.stderr)
        return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index]
                                                   if self.device.type == "cuda" else None)

    def _prepare_run(self) -> None:
        """Class statistics, then (with the settings, checkpoint and data checked) the run folder, then the loader."""
        cfg, process = self.config, self.process
        data = class_statistics(cfg, self.train_set, process)
        if process.main:
            continuing = self.resumed and os.path.exists(cfg.out) and os.path.samefile(cfg.out,
                                                                                        run_folder_of(cfg.resume))
            self._claim = prepare_run_folder(cfg.out, cfg.overwrite, continuing, cfg.to_dict())
            cfg.out = self._claim.folder
        if process.world > 1:  # every rank must agree on the folder
            holder = [cfg.out]
            dist.broadcast_object_list(holder, src=0)
            cfg.out = holder[0]
        self.out = cfg.out
        self.loader = train_loader(cfg, data, self.start, process, self.device)

    def _train_loop(self) -> None:
        cfg = self.config
        self.t0 = time.time()
        self.model.train()
        for batch in self.loader:
            if self.iteration >= self.stop:
                break
            step = self.run_step(batch)
            self._call("after_step", step)
            it = step.iteration
            if cfg.ckpt_every and it % cfg.ckpt_every == 0 and it < self.stop:
                self.save_checkpoint()
            if self._validation_due(it) and it < cfg.iters:
                self.validate()
        self._call("after_loop")

    def _validation_due(self, it: int) -> bool:
        """``--val-every``: after every N iterations, or (``epoch``) after the iteration that
        completes an epoch of the sampler (the official trainer validates after each epoch)."""
        every = self.config.val_every
        if every == "epoch":
            sampler = self.loader.batch_sampler
            step = sampler.batch_size * sampler.world_size
            return sampler.locate(it * step)[0] > sampler.locate((it - 1) * step)[0]
        return bool(every) and it % every == 0

    def _finish(self) -> dict:
        """The final checkpoint; when all iterations are done, the final validation and ``metrics.json``."""
        train_time = self.seconds_before + time.time() - self.t0
        self.save_checkpoint()
        metrics: dict = {}
        if self.iteration >= self.config.iters:
            res = self.validate(final=True)
            if self.process.main:
                metrics = {"iteration": res.iteration, "mIoU": res.miou, "pixel_acc": res.pixel_acc,
                           "iou": {n: (None if math.isnan(v) else v)
                                   for n, v in zip(self.labels.class_names, res.ious)},
                           "train_seconds": train_time, "world_size": self.process.world, "device": str(self.device),
                           "best": self.best}
                _io.write_json(os.path.join(self.out, "metrics.json"), metrics, indent=1)
        self._call("after_train", metrics)
        return metrics

    # ------------------------------------------------------------------ the pieces
    def run_step(self, batch: dict) -> StepResult:
        """One iteration on ``batch``: forward (under ``--amp``), loss, backward, optimiser and
        schedule steps.

        Raises:
            RunError: the loss is not finite (the run diverged).
        """
        cfg, device = self.config, self.device
        images = batch["image"].to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = batch["mask"].to(device, non_blocking=True)
        row_pos = batch["row_pos"].to(device, non_blocking=True)
        with amp_context(cfg.amp, device):
            res = self.model(images, row_pos)
        loss, parts = segmentation_loss(res.logits, masks, res.aux_logits, cfg.aux_weight,
                                        class_weighted=cfg.cls_wt_loss, image_weighted=cfg.img_wt_loss,
                                        batch_weighting=cfg.batch_weighting, wt_bound=cfg.wt_bound)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise self._diverged(f"the loss is {loss_value} at iteration {self.iteration}")
        return StepResult(self.iteration, loss_value, {k: float(v) for k, v in parts.items()},
                          images.shape[0] * self.process.world, {g["name"]: g["lr"] for g in self.optimizer.param_groups})

    def validate(self, final: bool = False) -> ValidationResult:
        """Score the validation set now (every process takes part); hooks see its progress and result."""
        process = self.process
        total = validation_size(self.config, self.val_set)
        self._call("before_validation", len(range(process.rank, total, process.world)), final)
        ious, miou, acc = validate(self.model, self.val_set, self.device, self.config, process,
                                   on_batch=lambda batch, pred: self._call("after_validation_batch", len(pred)))
        result = ValidationResult(self.iteration, ious, miou, acc, total, final)
        self._call("after_validation", result)
        return result

    def save_checkpoint(self, path: str | None = None, latest: bool = True) -> None:
        """Write the checkpoint (default ``<run folder>/checkpoint.pt``) that a resume continues
        exactly from: model, optimiser, schedule, scaler, every rank's RNG states, the settings,
        the classes, the best validation so far. Every process takes part; rank 0 writes
        (atomically). ``latest``: it is the run's newest checkpoint (what a Ctrl-C names;
        ``best.pt`` is not).""

        Raises:
            RunError: the weights hold NaN or Inf (the run diverged; nothing is written), or the
                write failed (status 1; the previous checkpoint is intact).
        """
        bad = [name for name, t in self.net.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:  # every rank holds the same weights: all stop here
            raise self._diverged(f"{len(bad)} weight tensors hold NaN or Inf after iteration {self.iteration} "
                                 f"(e.g. {bad[0]}); no checkpoint was written")
        states = [rng_state()]
        if self.process.world > 1:  # every rank's RNG (dropout, HANet position jitter) so a resume continues exactly
            states = [None] * self.process.world
            dist.all_gather_object(states, rng_state())
        if not self.process.main:
            return
        path = path or os.path.join(self.out, "checkpoint.pt")
        try:
            ckpt_io.save_atomic({
                "iteration": self.iteration, "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": states[0], "rng_per_rank": states, "args": self.config.to_dict(),
                "model_config": json.loads(json.dumps(dataclasses.asdict(self.net.config))),
                "threads": torch.get_num_threads(), "train_seconds": self.seconds_before + time.time() - self.t0,
                "train_images": len(self.train_set), "labels": self.labels.to_dict(), "best": self.best,
            }, path)
        except ckpt_io.CheckpointError as e:
            raise RunError(str(e), status=1) from None
        if latest:
            self.last_checkpoint = (path, self.iteration)
            self._call("after_checkpoint", path)

    def _diverged(self, what: str) -> RunError:
        cfg = self.config
        return RunError(f"the training diverged: {what}; try a lower --lr (this run: --lr {cfg.lr}, --hanet-lr "
                        f"{cfg.hanet_lr})", status=1)

    def _check_training_set(self, state: dict) -> None:
        """Warn (rank 0) when a resumed run's training set changed size: its sampling then differs
        from the run's."""
        saved = state.get("train_images")
        if saved is not None and saved != len(self.train_set) and self.process.main:
            warnings.warn(f"hanet_fast.train: the training set has {len(self.train_set)} images where the run had "
                          f"{saved}: the resumed run samples other batches than the run would have")

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)
