"""Fixtures shared by the test modules."""

from __future__ import annotations

import warnings

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Runs a module's tests on one torch thread: its shapes are tiny, where one thread is
    fastest and immune to other processes' load on the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def quiet_fallback_warning():
    """Silences the warning that ``auto`` fell back to the reference backend."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="hanet_fast: no fused backend")
        yield


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory):
    """Points the class-centroid cache (``$HANET_FAST_CACHE``, default ``~/.cache/hanet_fast``) into
    a temporary folder for the whole session, subprocesses included: tests write nowhere else."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HANET_FAST_CACHE", str(tmp_path_factory.mktemp("hanet_fast_cache")))
        yield
