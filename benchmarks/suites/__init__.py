"""The benchmark suites, by the name ``--suites`` takes.

Each suite module has ``run(ctx: Context) -> dict`` (its rows and notes, stored in the JSON
under the suite's name; ``ops.run(ctx, op_names)`` serves both ``ops`` and ``module``) and
``markdown(result: dict) -> str`` (its section of the report); ``benchmarks/report.py`` writes
the CSV, markdown and charts from those results.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from benchmarks.common import Budget


@dataclasses.dataclass
class Context:
    """What a suite needs from the command line and the run."""

    device: torch.device
    args: argparse.Namespace
    budget: Budget
    cache: dict = dataclasses.field(default_factory=dict)  # shared between suites (e.g. the copy roofline)


SUITE_NAMES = ("ops", "module", "train-step", "inference")
