"""MemoryHooks: each node's peak resident memory is measured from a reset, and what a node leaves in a
reference cycle is released before the next node."""

from __future__ import annotations

import gc
import sys
from types import SimpleNamespace

import pytest
import torch

from ziplora_pipeline.core.evaluation.cost import proc_status_mb, reset_rss_peak
from ziplora_pipeline.kedro_glue.hooks import MemoryHooks

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")


def test_each_node_peak_is_its_own_and_a_cycle_it_left_is_collected():
    hooks = MemoryHooks()
    hooks.before_pipeline_run()
    big = SimpleNamespace(name="big")
    hooks.before_node_run(big)
    block = torch.ones(300 * 2**20 // 4)  # 300 MiB, touched
    left = {"tensor": block}
    left["self"] = left  # a reference cycle, as accelerate's wrapped forward makes: only gc frees it
    collected = []
    gc.disable()  # the cycle must survive until the hook's collect
    try:
        import weakref

        weakref.finalize(block, collected.append, True)
        del block, left
        hooks.after_node_run(big)
    finally:
        gc.enable()
    assert collected == [True]  # the hook's gc.collect freed the cycle's 300 MiB
    small = SimpleNamespace(name="small")
    hooks.before_node_run(small)
    torch.ones(10)
    hooks.after_node_run(small)
    assert hooks.peaks["big"]["rss_gb"] - hooks.peaks["small"]["rss_gb"] > 0.2  # 0.29 GiB: the reset isolates nodes


def test_peak_reset_reads_back():
    assert reset_rss_peak()
    before = proc_status_mb("VmHWM") / 1024
    x = torch.ones(200 * 2**20 // 4)
    assert proc_status_mb("VmHWM") / 1024 - before > 0.15
    del x
