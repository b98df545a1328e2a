"""Hooks: what a :class:`~hanet_fast.training.Trainer` tells the outside world as a run goes.

The training loop knows nothing of progress bars, TensorBoard or figures; it calls each hook's
methods at these points (a hook overrides the ones it needs; each gets the trainer, whose
``config``, ``process``, ``device``, ``model``, ``net``, ``optimizer``, ``iteration``, ``start``,
``stop`` and ``out`` it may read):

==========================  ==============================================================
``after_setup``             network, optimiser and resume state ready, before the class
                            statistics (the first slow step)
``before_train``            run folder written, loader built
``after_step(step)``        after every iteration (:class:`StepResult`)
``before_validation``       ``(images, final)``: this process's validation images
``after_validation_batch``  ``(images)`` scored in the batch just done
``after_validation(res)``   :class:`~hanet_fast.training.validation.ValidationResult`
``after_checkpoint(path)``  a checkpoint was written (rank 0)
``after_loop``              the iterations are done (or ``stop_after`` reached)
``after_train(metrics)``    the final report (empty when stopped early)
==========================  ==============================================================

Hooks are called on every process in the order given; the built-in reporters
(:mod:`hanet_fast.training.reporters`) are installed on rank 0 only.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Hook", "StepResult"]


@dataclasses.dataclass
class StepResult:
    """One training iteration: its number (1-based), the total ``loss`` and its ``parts``
    (``main``, ``aux``), the images it trained on over all processes, and each parameter group's
    learning rate after the schedule's step."""

    iteration: int
    loss: float
    parts: dict[str, float]
    images: int
    lrs: dict[str, float]


class Hook:
    """Base class of training hooks: every method does nothing (see the module docstring)."""

    def after_setup(self, trainer) -> None:
        """The network, optimiser and resume state are ready."""

    def before_train(self, trainer) -> None:
        """The run folder is written and the first batch is about to load."""

    def after_step(self, trainer, step: StepResult) -> None:
        """An iteration is done."""

    def before_validation(self, trainer, images: int, final: bool) -> None:
        """A validation of ``images`` images (this process's share) starts; ``final``: the last one."""

    def after_validation_batch(self, trainer, images: int) -> None:
        """A validation batch of ``images`` images is scored."""

    def after_validation(self, trainer, result) -> None:
        """A validation is done."""

    def after_checkpoint(self, trainer, path: str) -> None:
        """A checkpoint was written to ``path``."""

    def after_loop(self, trainer) -> None:
        """The training iterations are over; the final checkpoint and validation follow."""

    def after_train(self, trainer, metrics: dict) -> None:
        """The run is done; ``metrics`` as :meth:`Trainer.fit` returns them."""
