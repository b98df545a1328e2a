"""Training as a library: ``from hanet_fast.training import TrainConfig, Trainer``.

- :class:`TrainConfig` (:mod:`.config`): every setting of ``python -m hanet_fast.train``, with
  :meth:`TrainConfig.from_preset` for the presets (:mod:`.presets`).
- :class:`Trainer` (:mod:`.trainer`): ``Trainer(config).fit()`` runs the training and returns the
  final metrics; :class:`Hook` (:mod:`.hooks`) subclasses see every step, validation and checkpoint.
- The pieces: :mod:`.runtime` (processes, device, threads, RNG), :mod:`.data`, :mod:`.model`,
  :mod:`.resume`, :mod:`.run_folder`, :mod:`.validation`, :mod:`.reporters` (console,
  TensorBoard, figures), :mod:`.checkpoint`, :mod:`.losses`, :mod:`.schedule`, :mod:`.metrics`,
  :mod:`.visualize`.
"""

from __future__ import annotations

import importlib

__all__ = ["TrainConfig", "ConfigError", "Trainer", "Hook", "StepResult", "ValidationResult", "RunError"]

_EXPORTS = {"TrainConfig": "config", "ConfigError": "config", "Trainer": "trainer", "Hook": "hooks",
            "StepResult": "hooks", "ValidationResult": "validation", "RunError": "errors"}


def __getattr__(name: str):
    # Imported on first use: hanet_fast.inference imports .checkpoint, and the engine imports
    # hanet_fast.inference.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
