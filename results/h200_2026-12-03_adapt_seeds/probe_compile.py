"""HOPE forward+backward at PPO's minibatch shape on the CPU, eager against
``compile_fast_paths()`` (median of 5 after one call), and a profile of one eager call.

Usage: python probe_compile.py [--profile]
"""

import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from hope_agent.models import make_backbone

B, T = 16, 120  # a minibatch of PPO windows in the adapt runs (64 envs a rank, 4 minibatches)


def _call(compiled: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    m = make_backbone("hope", 64, n_layers=1, n_heads=4, chunk_size=8, cms_periods=[1, 16, 256])
    if compiled:
        m.compile_fast_paths()
    x = torch.randn(B, T, 64)
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    state = m.init_state(B)

    def once() -> None:
        y, _ = m(x, state, first)
        y.square().mean().backward()

    return once


def main() -> None:
    torch.set_num_threads(1)
    if "--profile" in sys.argv:
        once = _call(False)
        once()
        with profile(activities=[ProfilerActivity.CPU]) as p:
            once()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    for compiled in (False, True, False):
        once = _call(compiled)
        t0 = time.perf_counter()
        once()
        first = time.perf_counter() - t0
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
        name = "compiled" if compiled else "eager"
        print(f"{name}: first call {first:.1f} s, median {sorted(times)[2] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
