"""Training helpers for :mod:`hanet_fast.train`: losses, schedules, checkpoints, metrics, figures."""
