"""Backbone throughput, step latency and kernel counts beside in-run anchors.

Prints Markdown tables and optionally writes JSON: training throughput (forward + backward,
tokens/s), control-loop step latency (one env step for a batch of envs, eager and replayed from a
CUDA graph), peak memory, and each figure as a ratio to the anchors measured in the same run on
the same machine: cuDNN LSTM, torch ``TransformerEncoderLayer``, titans-pytorch ``NeuralMemory``
and flash-linear-attention's ``chunk_delta_rule`` (each imported when installed; otherwise its
row says why). Also: a control-sized row (d64, T = 32 windows with resets, as PPO trains them),
op / kernel counts of one HOPE ``step`` and forward, and the fast path's error against float64.

    python scripts/benchmark_backbones.py                  # GPU shapes (B16 T1024 d256 4 heads)
    python scripts/benchmark_backbones.py --preset cpu     # small shapes for a 2-core CPU
    python scripts/benchmark_backbones.py --json out.json  # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from hope_agent.build import compile_backbone
from hope_agent.io import atomic_write_text
from hope_agent.models.base import Backbone
from hope_agent.models.factory import make_backbone
from hope_agent.models.graphs import GraphedStep

PRESETS = {
    "gpu": dict(batch=16, seq=1024, d_model=256, n_heads=4, n_layers=1, step_batch=64, repeats=10),
    "cpu": dict(batch=4, seq=256, d_model=128, n_heads=4, n_layers=1, step_batch=16, repeats=3),
}
# PPO's training windows: the shipped configs/model/hope.yaml, 64 windows of 32 steps
CONTROL = dict(batch=64, seq=32, d_model=64, n_heads=4, chunk_size=8, reset_every=200)
NAN = float("nan")


@dataclass
class Row:
    name: str
    train_tokens_per_s: float = NAN
    step_us: float = NAN
    peak_mem_mib: float = NAN
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernel selection, allocator, lazy init
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else NAN


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _train_rate(
    fn: Callable[[], object], tokens: int, device: torch.device, repeats: int
) -> tuple[float, float]:
    _reset_peak(device)
    sec = _median_time(fn, device, repeats)
    return tokens / sec, _peak_mib(device)


def _step_us(model: Backbone[Any], batch: int, device: torch.device, repeats: int) -> float:
    with torch.no_grad():
        state = model.init_state(batch, device=device)
        x_t = torch.randn(batch, model.d_model, device=device)

        def one_step() -> None:
            nonlocal state
            _, state = model.step(x_t, state)

        return _median_time(one_step, device, max(20, repeats)) * 1e6


def _graphed_step_us(model: Backbone[Any], batch: int, device: torch.device, repeats: int) -> Row:
    """Latency of the CUDA-graph replay of ``step``, and its largest deviation from eager."""
    graphed = GraphedStep(model, batch, device)
    x = torch.randn(8, batch, model.d_model, device=device)
    with torch.no_grad():
        eager = model.init_state(batch, device)
        state = graphed.init_state()
        err = 0.0
        for x_t in x:
            y_ref, eager = model.step(x_t, eager)
            y, state = graphed(x_t, state)
            err = max(err, float((y - y_ref).abs().max() / y_ref.abs().max()))

        def one_step() -> None:
            nonlocal state
            _, state = graphed(x[0], state)

        us = _median_time(one_step, device, max(50, repeats)) * 1e6
    return Row("", step_us=us, note=f"graph vs eager max rel. dev. {err:.1e}")


# ----------------------------------------------------------------------------- backbones


def _hope(cfg: dict, device: torch.device, compiled: bool, **kwargs: Any) -> Backbone[Any]:
    torch.manual_seed(0)
    model = make_backbone("hope", cfg["d_model"], n_heads=cfg["n_heads"], **kwargs).to(device)
    if compiled:
        compile_backbone(model)
    return model


def bench_backbone(
    name: str, cfg: dict, device: torch.device, extra: dict, compiled: bool = False
) -> Row:
    """Forward+backward tokens/s over (B, T); latency of one ``step`` at ``step_batch`` rows.

    ``compiled``: HOPE compiled as ``compile=true`` compiles it in training
    (:func:`hope_agent.build.compile_backbone`; the warm-up call compiles).
    """
    torch.manual_seed(0)
    model = make_backbone(name, cfg["d_model"], **extra).to(device)
    if compiled:
        compile_backbone(model)
    b, t, d = cfg["batch"], cfg["seq"], cfg["d_model"]
    x = torch.randn(b, t, d, device=device, requires_grad=True)

    def train_step() -> None:
        y, _ = model(x, model.init_state(b, device=device))
        y.square().mean().backward()

    rate, peak = _train_rate(train_step, b * t, device, cfg["repeats"])
    step = _step_us(model, cfg["step_batch"], device, cfg["repeats"])
    return Row(name, rate, step, peak)


class _FromFreshState(nn.Module):
    """``x -> backbone(x, fresh state)[0]``: tensors in and out, as graph capture needs."""

    def __init__(self, backbone: Backbone[Any]) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x, self.backbone.init_state(x.shape[0], x.device))[0]


def bench_graphed_train(cfg: dict, device: torch.device, chunk: int, compiled: bool = False) -> Row:
    """HOPE fwd+bwd with forward and backward each replayed from a CUDA graph
    (``torch.cuda.make_graphed_callables``): what is left once launches cost nothing;
    ``compiled``: the graphs hold the ``torch.compile``'d segment kernels (``compile=true``)."""
    name = f"hope (C={chunk}), fwd+bwd as CUDA graphs" + (", compiled" if compiled else "")
    if device.type != "cuda":
        return Row(name, note="needs CUDA")
    b, t, d = cfg["batch"], cfg["seq"], cfg["d_model"]
    model = _hope(cfg, device, compiled, n_layers=cfg["n_layers"], chunk_size=chunk)
    eager = _FromFreshState(model)
    x = torch.randn(b, t, d, device=device, requires_grad=True)
    y_ref = eager(x).detach()  # before the capture: make_graphed_callables replaces its forward
    try:
        graphed = cast(Callable[[Tensor], Tensor], torch.cuda.make_graphed_callables(eager, (x,)))
    except RuntimeError as err:  # a failed capture is a result: report it, go on
        return Row(name, note=f"capture failed: {str(err).splitlines()[0][:160]}")
    dev = float((graphed(x).detach() - y_ref).abs().max() / y_ref.abs().max())

    def train_step() -> None:
        graphed(x).square().mean().backward()

    rate, peak = _train_rate(train_step, b * t, device, cfg["repeats"])
    return Row(name, rate, NAN, peak, note=f"graph vs eager max rel. dev. {dev:.1e}")


def bench_control(name: str, device: torch.device, repeats: int, extra: dict) -> Row:
    """PPO-sized training: 64 windows of 32 steps, d64, episode starts every ~200 steps."""
    c = CONTROL
    torch.manual_seed(0)
    model = make_backbone(name, c["d_model"], **extra).to(device)
    b, t = c["batch"], c["seq"]
    x = torch.randn(b, t, c["d_model"], device=device, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    first = (torch.rand(b, t, generator=gen) < 1.0 / c["reset_every"]).to(device)

    def train_step() -> None:
        y, _ = model(x, model.init_state(b, device=device), first)
        y.square().mean().backward()

    rate, peak = _train_rate(train_step, b * t, device, max(repeats, 10))
    return Row(f"control: {name}", rate, NAN, peak)


def bench_lstm(cfg: dict, device: torch.device, d_model: int | None = None) -> Row:
    """Anchor: cuDNN (or CPU) LSTM forward+backward, and an LSTMCell step."""
    b, t = cfg["batch"], cfg["seq"]
    d = d_model or cfg["d_model"]
    lstm = nn.LSTM(d, d, batch_first=True).to(device)
    x = torch.randn(b, t, d, device=device, requires_grad=True)

    def train_step() -> None:
        y, _ = lstm(x)
        y.square().mean().backward()

    rate, peak = _train_rate(train_step, b * t, device, max(cfg.get("repeats", 10), 10))
    sb = cfg.get("step_batch", b)
    cell = nn.LSTMCell(d, d).to(device)
    x_t = torch.randn(sb, d, device=device)
    h = (torch.zeros(sb, d, device=device), torch.zeros(sb, d, device=device))
    with torch.no_grad():
        step = _median_time(lambda: cell(x_t, h), device, 20) * 1e6
    return Row("anchor: LSTM", rate, step, peak)


def bench_torch_transformer(cfg: dict, device: torch.device) -> Row:
    """Anchor: torch TransformerEncoderLayer, causal, bf16 autocast on GPU, forward+backward."""
    b, t, d = cfg["batch"], cfg["seq"], cfg["d_model"]
    layer = nn.TransformerEncoderLayer(d, cfg["n_heads"], 4 * d, batch_first=True).to(device)
    x = torch.randn(b, t, d, device=device, requires_grad=True)
    mask = nn.Transformer.generate_square_subsequent_mask(t, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def train_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            y = layer(x, src_mask=mask, is_causal=True)
        y.float().square().mean().backward()

    rate, peak = _train_rate(train_step, b * t, device, cfg["repeats"])
    return Row("anchor: TransformerEncoderLayer", rate, NAN, peak)


def bench_titans_pytorch(cfg: dict, device: torch.device, chunk: int) -> Row:
    """Anchor: titans-pytorch ``NeuralMemory`` (its default 2-layer MLP memory), fp32."""
    name = f"anchor: titans-pytorch NeuralMemory (C={chunk})"
    try:
        from titans_pytorch import NeuralMemory
    except ImportError as err:
        return Row(name, note=f"not installed ({err})")
    b, t, d, h = cfg["batch"], cfg["seq"], cfg["d_model"], cfg["n_heads"]
    torch.manual_seed(0)
    mem = NeuralMemory(dim=d, chunk_size=chunk, heads=h, dim_head=d // h).to(device)
    x = torch.randn(b, t, d, device=device, requires_grad=True)

    def train_step() -> None:
        out, _ = mem(x)
        out.square().mean().backward()

    rate, peak = _train_rate(train_step, b * t, device, cfg["repeats"])
    return Row(name, rate, NAN, peak)


def bench_fla_delta_rule(cfg: dict, device: torch.device) -> Row:
    """Anchor: flash-linear-attention ``chunk_delta_rule`` (a linear memory), bf16, fwd+bwd."""
    name = "anchor: FLA chunk_delta_rule (bf16)"
    if device.type != "cuda":
        return Row(name, note="needs CUDA (Triton kernels)")
    try:
        from fla.ops.delta_rule import chunk_delta_rule
    except ImportError as err:
        return Row(name, note=f"not installed ({err})")
    b, t, d, h = cfg["batch"], cfg["seq"], cfg["d_model"], cfg["n_heads"]
    shape = (b, t, h, d // h)
    bf = torch.bfloat16
    q, k, v = (torch.randn(shape, device=device, dtype=bf, requires_grad=True) for _ in range(3))
    beta = torch.rand(b, t, h, device=device, dtype=bf).requires_grad_(True)

    def train_step() -> None:
        o, _ = chunk_delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel=True)
        o.float().square().mean().backward()

    rate, peak = _train_rate(train_step, b * t, device, cfg["repeats"])
    return Row(name, rate, NAN, peak)


# ----------------------------------------------------------------------------- HOPE specifics


def _aten_ops(fn: Callable[[], object]) -> tuple[int, int]:
    """(all top-level ATen calls, those that are not views) in one call of ``fn``, on the CPU."""
    views = {
        "aten::view",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::select",
        "aten::slice",
        "aten::transpose",
        "aten::mT",
        "aten::expand",
        "aten::expand_as",
        "aten::permute",
        "aten::reshape",
        "aten::unbind",
        "aten::as_strided",
        "aten::alias",
        "aten::t",
        "aten::detach",
    }
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    top = [
        e.name
        for e in prof.events()
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]
    return len(top), sum(n not in views for n in top)


def _cuda_kernels(fn: Callable[[], object], table: bool = False) -> int:
    """CUDA kernels launched by one call of ``fn``; ``table`` prints where their time goes."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    if table:
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def _cpu_counts(layers: int, chunk: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make_backbone("hope", 64, n_layers=layers, n_heads=4, chunk_size=chunk)
    x, x_t = torch.randn(8, 64, 64), torch.randn(8, 64)
    with torch.no_grad():
        state = model.init_state(8)
        step = _aten_ops(lambda: model.step(x_t, state))
        fwd = _aten_ops(lambda: model(x, model.init_state(8)))
    return {
        "where": "cpu",
        "shape": f"d64 B8 T64 C{chunk} {layers} layer(s)",
        "step_aten": step[0],
        "step_non_view": step[1],
        "forward_aten": fwd[0],
        "forward_non_view": fwd[1],
    }


def _cuda_counts(layers: int, cfg: dict, device: torch.device) -> dict[str, Any]:
    b, t, d, sb = cfg["batch"], cfg["seq"], cfg["d_model"], cfg["step_batch"]
    torch.manual_seed(0)
    model = make_backbone("hope", d, n_layers=layers, n_heads=4, chunk_size=64).to(device)
    x = torch.randn(b, t, d, device=device, requires_grad=True)
    x_t = torch.randn(sb, d, device=device)
    with torch.no_grad():
        state = model.init_state(sb, device)
        n_step = _cuda_kernels(lambda: model.step(x_t, state))

    def train_step() -> None:
        y, _ = model(x, model.init_state(b, device=device))
        y.square().mean().backward()

    return {
        "where": "cuda",
        "shape": f"d{d} B{b} T{t} C64 {layers} layer(s); step B{sb}",
        "step_kernels": n_step,
        "fwd_bwd_kernels": _cuda_kernels(train_step, table=True) if layers == 1 else None,
    }


def op_counts(device: torch.device, cfg: dict) -> list[dict[str, Any]]:
    """ATen ops on the CPU (d64, batch 8, T = 64) and, on CUDA, kernels at the GPU shape."""
    out = [_cpu_counts(layers, 16) for layers in (1, 4)]
    if device.type == "cuda":
        out += [_cuda_counts(layers, cfg, device) for layers in (1, 4)]
    return out


def accuracy(device: torch.device) -> dict[str, float]:
    """Relative errors of the fp32 fast path (on ``device``) against float64 on the CPU."""
    torch.manual_seed(0)
    ref = make_backbone("hope", 64, n_layers=2, n_heads=4, chunk_size=16).double()
    model = make_backbone("hope", 64, n_layers=2, n_heads=4, chunk_size=16).to(device)
    model.load_state_dict(ref.state_dict())
    b, t = 8, 100
    x = torch.randn(b, t, 64, dtype=torch.float64)
    first = torch.rand(b, t) < 0.02
    with torch.no_grad():
        y_ref, _ = ref(x, ref.init_state(b), first)
        y, _ = model(x.float().to(device), model.init_state(b, device), first.to(device))
        state, ys = model.init_state(b, device), []
        for i in range(t):
            y_t, state = model.step(x[:, i].float().to(device), state, first[:, i].to(device))
            ys.append(y_t)

    def rel(a: Tensor) -> float:
        return float((a.double().cpu() - y_ref).norm() / y_ref.norm())

    return {"forward_vs_float64": rel(y), "step_vs_float64": rel(torch.stack(ys, 1))}


# ----------------------------------------------------------------------------- report


def _fmt(v: float, spec: str) -> str:
    return "–" if math.isnan(v) else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="hope,hope_no_cms,hope_attention,gru,transformer,mlp")
    parser.add_argument(
        "--chunk", type=int, nargs="+", default=[64, 16], help="HOPE chunk sizes to time"
    )
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time HOPE with compile_fast_paths() (torch.compile; minutes of compiling)",
    )
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cfg = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    rows = [bench_lstm(cfg, device), bench_torch_transformer(cfg, device)]
    rows += [bench_titans_pytorch(cfg, device, c) for c in (64, 16)]
    rows.append(bench_fla_delta_rule(cfg, device))
    anchors = {r.name: r for r in rows}
    if "hope" in args.models.split(","):
        rows += [bench_graphed_train(cfg, device, c) for c in args.chunk]
        if args.compile:
            rows += [bench_graphed_train(cfg, device, c, compiled=True) for c in args.chunk]
    for name in args.models.split(","):
        common: dict[str, Any] = dict(n_layers=cfg["n_layers"])
        if name.startswith("hope") and name != "hope_attention":
            for c in args.chunk:
                row = bench_backbone(
                    name, cfg, device, dict(common, n_heads=cfg["n_heads"], chunk_size=c)
                )
                row.name = f"{name} (C={c})"
                rows.append(row)
                if args.compile and name == "hope":
                    opts = dict(common, n_heads=cfg["n_heads"], chunk_size=c)
                    row = bench_backbone(name, cfg, device, opts, compiled=True)
                    row.name = f"{name} (C={c}), compiled"
                    rows.append(row)
            continue
        if name in ("hope_attention", "transformer"):
            common["n_heads"] = cfg["n_heads"]
        rows.append(bench_backbone(name, cfg, device, common))

    # step latency at the step batch: 1 layer and the target's 4 layers, eager and graphed
    steps: list[Row] = []
    for layers, chunk, compiled in [
        (1, 64, False),
        (1, 16, False),
        (4, 64, False),
        *([(1, 64, True), (4, 64, True)] if args.compile else []),
    ]:
        model = _hope(cfg, device, compiled, n_layers=layers, chunk_size=chunk)
        label = f"hope step, {layers} layer(s) d{cfg['d_model']} C={chunk}, B{cfg['step_batch']}"
        label += ", compiled" if compiled else ""
        steps.append(Row(f"{label}, eager", step_us=_step_us(model, cfg["step_batch"], device, 20)))
        if device.type == "cuda":
            try:
                g = _graphed_step_us(model, cfg["step_batch"], device, 20)
            except RuntimeError as err:  # a failed capture is a result: report it, go on
                g = Row("", note=f"capture failed: {str(err).splitlines()[0][:160]}")
            g.name = f"{label}, CUDA graph"
            steps.append(g)

    control = [
        bench_lstm(dict(CONTROL, step_batch=CONTROL["batch"]), device, CONTROL["d_model"]),
        bench_control("gru", device, cfg["repeats"], {"n_layers": 1}),
        bench_control(
            "hope",
            device,
            cfg["repeats"],
            {"n_layers": 1, "n_heads": CONTROL["n_heads"], "chunk_size": CONTROL["chunk_size"]},
        ),
    ]
    control[0].name = "control: anchor LSTM"
    counts = op_counts(device, cfg)
    acc = accuracy(device)

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    lstm = anchors["anchor: LSTM"]
    refs = [
        ("x LSTM", lstm),
        ("x titans C=64", anchors["anchor: titans-pytorch NeuralMemory (C=64)"]),
        ("x titans C=16", anchors["anchor: titans-pytorch NeuralMemory (C=16)"]),
        ("x FLA", anchors["anchor: FLA chunk_delta_rule (bf16)"]),
    ]
    print(f"\n{where}, torch {torch.__version__}, shapes {cfg}\n")
    head = " | ".join(name for name, _ in refs)
    print(f"| backbone | fwd+bwd tokens/s | {head} | step us | step x LSTMCell | peak MiB | note |")
    print("|---" * (7 + len(refs)) + "|")
    for r in rows:
        ratios = " | ".join(
            _fmt(r.train_tokens_per_s / a.train_tokens_per_s, ".3f") for _, a in refs
        )
        print(
            f"| {r.name} | {_fmt(r.train_tokens_per_s, ',.0f')} | {ratios} | "
            f"{_fmt(r.step_us, '.0f')} | {_fmt(r.step_us / lstm.step_us, '.1f')} | "
            f"{_fmt(r.peak_mem_mib, '.0f')} | {r.note} |"
        )
    print(
        f"\n| step (no grad) | us | x LSTMCell ({lstm.step_us:.0f} us) | note |\n|---|---|---|---|"
    )
    for r in steps:
        ratio = _fmt(r.step_us / lstm.step_us, ".1f")
        print(f"| {r.name} | {_fmt(r.step_us, '.0f')} | {ratio} | {r.note} |")
    c_lstm = control[0]
    print(f"\ncontrol shape {CONTROL}\n\n| model | fwd+bwd tokens/s | x LSTM |\n|---|---|---|")
    for r in control:
        rel = r.train_tokens_per_s / c_lstm.train_tokens_per_s
        print(f"| {r.name} | {r.train_tokens_per_s:,.0f} | {rel:.3f} |")
    print("\nop / kernel counts of HOPE (one call)\n")
    for c in counts:
        print(c)
    print(f"\nfp32 fast path vs float64 (relative L2 error): {acc}")
    if args.json:
        record = {
            "device": where,
            "torch": torch.__version__,
            "shapes": cfg,
            "control_shape": CONTROL,
            "rows": [asdict(r) for r in rows],
            "steps": [asdict(r) for r in steps],
            "control": [asdict(r) for r in control],
            "op_counts": counts,
            "accuracy": acc,
        }
        atomic_write_text(args.json, json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
