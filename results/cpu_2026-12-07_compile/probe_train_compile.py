"""HOPE forward+backward at PPO's minibatch shapes: eager against ``torch.compile`` of the
segment iteration, default mode and ``mode="reduce-overhead"`` (CUDA-graph trees), and against
the whole forward+backward captured in one CUDA graph (``graph``: eager kernels;
``graph-default``: the default-mode compiled segments; both inside ``static_segments``, as
``graph_update=true`` trains), with a cuDNN GRU / LSTM of the same width as the anchor of the
same run, and the equality check of each path against eager (outputs and every parameter's
gradient, fresh random inputs).

Usage: python probe_train_compile.py [--device cuda] [--json out.json] [--profile DIR]

``--profile DIR`` also writes, for every HOPE mode and shape, the profiler's table of one timed
call (CPU and CUDA time per op and kernel, launches counted) to ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from hope_agent.algos.graphed import max_resets
from hope_agent.models import make_backbone
from hope_agent.models.hope import Hope
from hope_agent.models.titans import static_segments


def _model(d: int, chunk: int, layers: int, device: torch.device) -> Hope:
    torch.manual_seed(0)
    m = make_backbone(
        "hope", d, n_layers=layers, n_heads=4, chunk_size=chunk, cms_periods=[1, 16, 256]
    )
    assert isinstance(m, Hope)
    return m.to(device)


def _inputs(b: int, t: int, d: int, device: torch.device, seed: int) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g).to(device)
    first = torch.rand(b, t, generator=g) < 1.0 / 120  # an episode start about once a window
    first[:, 0] = True
    return x, first.to(device)


def _readout(y: torch.Tensor) -> torch.Tensor:
    # a fixed random readout: the square of the final RMSNorm's output would be about constant,
    # and its tiny gradients would be rounding noise
    return torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device)


def _fwd_bwd(m: torch.nn.Module, x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    m.zero_grad(set_to_none=True)
    state = m.init_state(x.shape[0], x.device)
    y, _ = m(x, state, first)
    (y * _readout(y)).mean().backward()
    return y.detach()


class _GraphedFwdBwd:
    """:func:`_fwd_bwd` as one CUDA-graph replay (inputs copied into static buffers)."""

    def __init__(self, m: torch.nn.Module, x: torch.Tensor, first: torch.Tensor, resets: int):
        self.m, self.params, self.resets = m, list(m.parameters()), resets
        self.x, self.first = x.clone(), first.clone()
        self.r = _readout(x[..., : m.d_model])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.y, self.grads = self._run()

    def _run(self) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        with static_segments(self.resets):
            y, _ = self.m(self.x, self.m.init_state(self.x.shape[0], self.x.device), self.first)
            grads = torch.autograd.grad((y * self.r).mean(), self.params, allow_unused=True)
        return y.detach(), grads

    def __call__(self, m: torch.nn.Module, x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.first.copy_(first)
        self.graph.replay()
        for p, g in zip(self.params, self.grads, strict=True):
            p.grad = g
        return self.y


def _time(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench(
    d: int,
    chunk: int,
    layers: int,
    b: int,
    t: int,
    device: torch.device,
    reps: int,
    modes: list[str],
    rows: list[dict],
    save: Callable[[], None],
    profile_to: Path | None = None,
) -> None:
    ref = _model(d, chunk, layers, device)
    shape = f"d{d} C{chunk} L{layers} B{b} T{t}"
    for label in ("gru", "lstm"):
        torch.manual_seed(0)
        a = make_backbone(label, d) if label == "gru" else torch.nn.LSTM(d, d, batch_first=True)
        a = a.to(device)
        x, first = _inputs(b, t, d, device, 0)
        if label == "gru":
            run = lambda a=a, x=x, first=first: _fwd_bwd(a, x, first)  # noqa: E731
        else:

            def run(a=a, x=x) -> None:
                a.zero_grad(set_to_none=True)
                a(x)[0].square().mean().backward()

        run()
        sec = _time(run, device, reps)
        rows.append(
            dict(
                shape=shape,
                path=f"anchor {label}",
                compile_s=0.0,
                ms=sec * 1e3,
                tokens_s=b * t / sec,
                rel_y=0.0,
                rel_g=0.0,
            )
        )
    for mode in modes:
        row: dict[str, Any] = dict(shape=shape, path=f"hope {mode}")
        try:
            row |= _bench_mode(ref, mode, (d, chunk, layers, b, t), device, reps, profile_to)
        except Exception as e:  # a failing mode is a row that says why; the others still run
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        rows.append(row)
        print(rows[-1], flush=True)
        save()


def _bench_mode(
    ref: Hope,
    mode: str,
    shape: tuple[int, int, int, int, int],
    device: torch.device,
    reps: int,
    profile_to: Path | None,
) -> dict:
    d, chunk, layers, b, t = shape
    m = _model(d, chunk, layers, device)
    if mode not in ("eager", "graph"):
        m.compile_fast_paths(None if mode in ("default", "graph-default") else mode)
    x, first = _inputs(b, t, d, device, 1)
    t0 = time.perf_counter()
    fb: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = _fwd_bwd
    if mode.startswith("graph"):
        resets = max(max_resets(_inputs(b, t, d, device, s)[1]) for s in (1, 2, 3))
        fb = _GraphedFwdBwd(m, x, first, resets)
    fb(m, x, first)
    if device.type == "cuda":
        torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    # fresh inputs (other reset pattern) for the check: both paths must agree on any input
    errs_y, errs_g = [], []
    for seed in (2, 3):
        xc, fc = _inputs(b, t, d, device, seed)
        y = fb(m, xc, fc).clone()
        g = [p.grad.clone() for p in m.parameters() if p.grad is not None]
        y_ref = _fwd_bwd(ref, xc, fc)
        g_ref = [p.grad for p in ref.parameters() if p.grad is not None]
        errs_y.append(_rel(y, y_ref))
        errs_g.append(max(_rel(a, r) for a, r in zip(g, g_ref, strict=True)))
    sec = _time(lambda: fb(m, x, first), device, reps)
    if profile_to is not None:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            fb(m, x, first)
            if device.type == "cuda":
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        name = f"d{d}_C{chunk}_L{layers}_B{b}_T{t}_{mode}.txt"
        (profile_to / name).write_text(prof.key_averages().table(sort_by=key, row_limit=40))
    return dict(
        compile_s=first_s,
        ms=sec * 1e3,
        tokens_s=b * t / sec,
        rel_y=max(errs_y),
        rel_g=max(errs_g),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--modes", default="eager,default,reduce-overhead")
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--shapes", default="64:8:1:16:120,64:8:1:128:120,256:64:1:16:1024")
    args = ap.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    rows: list[dict] = []

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)

    for spec in args.shapes.split(","):
        d, c, layers, b, t = (int(v) for v in spec.split(":"))
        bench(d, c, layers, b, t, dev, args.reps, args.modes.split(","), rows, save, args.profile)
    print("| shape | path | first call s | ms | tokens/s | rel err y | rel err grads |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['path']} | failed: {r['error'][:120]} |||||")
            continue
        print(
            f"| {r['shape']} | {r['path']} | {r['compile_s']:.1f} | {r['ms']:.1f} | "
            f"{r['tokens_s']:,.0f} | {r['rel_y']:.1e} | {r['rel_g']:.1e} |"
        )
    save()


if __name__ == "__main__":
    main()
