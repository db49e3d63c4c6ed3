"""Diagnosis of the crash of ``reduce-overhead`` training segments in the training loop (H100,
2026-12-07): ``scripts/benchmark_loop.py`` with ``compile_backbone`` patched back to the
session-14 behaviour (training segments through CUDA-graph trees on CUDA). Arguments are
``benchmark_loop.py``'s; ``NAME:compile`` rows then use reduce-overhead, and a ``cuda_graphs=false``
row (``NAME:eager`` cannot be combined with compile) is had through ``HOPE_NO_GRAPHED_STEP=1``.

    python results/cpu_2026-12-07_compile/loop_reduce_overhead.py --curriculum adapt ...
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import hope_agent.build as build
from hope_agent.models.hope import Hope


def _reduce_overhead(backbone: Hope) -> None:
    backbone.compile_fast_paths("reduce-overhead")


build.compile_backbone = _reduce_overhead  # type: ignore[assignment]
if os.environ.get("HOPE_NO_GRAPHED_STEP") == "1":
    from hope_agent.agents.agent import Agent

    # the agent's ``cuda_graphs`` always off, whatever the trainer sets
    Agent.cuda_graphs = property(lambda self: False, lambda self, value: None)  # type: ignore
root = Path(__file__).resolve().parents[2]
sys.argv[0] = str(root / "scripts" / "benchmark_loop.py")
runpy.run_path(sys.argv[0], run_name="__main__")
