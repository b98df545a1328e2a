"""Two nodes: torchrun --nnodes 2 (two local "nodes" of one process each, c10d rendezvous on
127.0.0.1, gloo). The ranks hold identical weights, and a resume of such a run continues exactly
(the same weights as the uninterrupted run)."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from test_train import ROOT, TINY, _env

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path, tag, args):
    """Start both nodes (node ranks 0 and 1) and wait for them; returns the per-rank weights."""
    weights = tmp_path / f"weights_{tag}"
    weights.mkdir()
    port = _free_port()
    env = dict(_env(), RANK_WEIGHTS_DIR=str(weights))
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node-rank",
         str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{tag}",
         os.path.join(ROOT, "tests", "multinode_train.py"), *TINY, "--workers", "0", "--device", "cpu",
         "--cache-dir", str(tmp_path / "cache"), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
    return [torch.load(weights / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_nodes_hold_identical_weights_and_resume_exactly(tmp_path):
    full = _two_nodes(tmp_path, "full", ["--iters", "4", "--out", str(tmp_path / "full")])
    assert full[0]["iteration"] == full[1]["iteration"] == 4
    # the learned weights (BatchNorm's running statistics are per process without SyncBatchNorm,
    # DDP sends rank 0's at each forward, and the checkpoint holds rank 0's)
    _assert_identical(full[0]["parameters"], full[1]["parameters"])
    _two_nodes(tmp_path, "first", ["--iters", "4", "--stop-after", "2", "--out", str(tmp_path / "part")])
    resumed = _two_nodes(tmp_path, "resumed", ["--iters", "4", "--resume", str(tmp_path / "part")])
    assert resumed[0]["iteration"] == 4
    _assert_identical(resumed[0]["parameters"], resumed[1]["parameters"])
    for rank in (0, 1):  # every tensor of each rank as in the uninterrupted run
        _assert_identical(resumed[rank]["model"], full[rank]["model"])
