"""Run ``python -m hanet_fast.train``'s command line under torchrun with one extra hook that saves
this rank's weights after the last iteration to ``$RANK_WEIGHTS_DIR/rank<r>.pt`` (for
tests/test_train_multinode.py; the CLI itself never writes per-rank files)."""

import os
import sys

import torch

from hanet_fast.train import given_settings, resolve_args
from hanet_fast.training import Trainer
from hanet_fast.training.hooks import Hook


class RankWeights(Hook):
    def after_loop(self, trainer):
        path = os.path.join(os.environ["RANK_WEIGHTS_DIR"], f"rank{trainer.process.rank}.pt")
        torch.save({"iteration": trainer.iteration, "model": trainer.net.state_dict(),
                    "parameters": {n: p.detach() for n, p in trainer.net.named_parameters()}}, path)


if __name__ == "__main__":
    argv = sys.argv[1:]
    Trainer(resolve_args(argv), [RankWeights()], given=given_settings(argv)).fit()
