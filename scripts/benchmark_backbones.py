"""Backbone throughput and memory beside in-run anchors (cuDNN LSTM, TransformerEncoderLayer).

Prints a Markdown table: training throughput (forward + backward, tokens/s), control-loop step
latency (one env step for a batch of envs), peak memory, and each figure as a ratio to the anchors
measured in the same run on the same machine (CONTINUAL_RL.md's anchors used the GPU shapes).

    python scripts/benchmark_backbones.py                  # GPU shapes (B16 T1024 d256 4 heads)
    python scripts/benchmark_backbones.py --preset cpu     # small shapes for a 2-core CPU
    python scripts/benchmark_backbones.py --json out.json  # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from hope_agent.io import atomic_write_text
from hope_agent.models.factory import make_backbone

PRESETS = {
    "gpu": dict(batch=16, seq=1024, d_model=256, n_heads=4, n_layers=1, step_batch=64, repeats=10),
    "cpu": dict(batch=4, seq=256, d_model=128, n_heads=4, n_layers=1, step_batch=16, repeats=3),
}


@dataclass
class Row:
    name: str
    train_tokens_per_s: float
    step_us: float
    peak_mem_mib: float


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
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**20


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_backbone(name: str, cfg: dict, device: torch.device, extra: dict) -> Row:
    """Forward+backward tokens/s over (B, T); latency of one ``step`` at ``step_batch`` rows."""
    torch.manual_seed(0)
    model = make_backbone(name, cfg["d_model"], **extra).to(device)
    b, t, d = cfg["batch"], cfg["seq"], cfg["d_model"]
    x = torch.randn(b, t, d, device=device, requires_grad=True)

    def train_step() -> None:
        state = model.init_state(b, device=device)
        y, _ = model(x, state)
        y.square().mean().backward()

    _reset_peak(device)
    sec = _median_time(train_step, device, cfg["repeats"])
    peak = _peak_mib(device)
    sb = cfg["step_batch"]
    with torch.no_grad():
        state = model.init_state(sb, device=device)
        x_t = torch.randn(sb, d, device=device)

        def one_step() -> None:
            nonlocal state
            _, state = model.step(x_t, state)

        step_sec = _median_time(one_step, device, max(20, cfg["repeats"]))
    return Row(name, b * t / sec, step_sec * 1e6, peak)


def bench_lstm(cfg: dict, device: torch.device) -> Row:
    """Anchor: cuDNN (or CPU) LSTM forward+backward, and an LSTMCell step."""
    b, t, d = cfg["batch"], cfg["seq"], cfg["d_model"]
    lstm = nn.LSTM(d, d, batch_first=True).to(device)
    x = torch.randn(b, t, d, device=device, requires_grad=True)

    def train_step() -> None:
        y, _ = lstm(x)
        y.square().mean().backward()

    _reset_peak(device)
    sec = _median_time(train_step, device, cfg["repeats"])
    peak = _peak_mib(device)
    cell = nn.LSTMCell(d, d).to(device)
    sb = cfg["step_batch"]
    x_t = torch.randn(sb, d, device=device)
    h = (torch.zeros(sb, d, device=device), torch.zeros(sb, d, device=device))
    with torch.no_grad():
        step_sec = _median_time(lambda: cell(x_t, h), device, max(20, cfg["repeats"]))
    return Row("anchor: LSTM", b * t / sec, step_sec * 1e6, peak)


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

    _reset_peak(device)
    sec = _median_time(train_step, device, cfg["repeats"])
    return Row("anchor: TransformerEncoderLayer", b * t / sec, float("nan"), _peak_mib(device))


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
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cfg = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    rows = [bench_lstm(cfg, device), bench_torch_transformer(cfg, device)]
    for name in args.models.split(","):
        common = dict(n_layers=cfg["n_layers"])
        if name.startswith("hope") and name != "hope_attention":
            for c in args.chunk:
                extra = dict(common, n_heads=cfg["n_heads"], chunk_size=c)
                row = bench_backbone(name, cfg, device, extra)
                row.name = f"{name} (C={c})"
                rows.append(row)
            continue
        if name in ("hope_attention", "transformer"):
            common["n_heads"] = cfg["n_heads"]
        rows.append(bench_backbone(name, cfg, device, common))
    lstm, attn = rows[0], rows[1]
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    print(f"\n{where}, torch {torch.__version__}, shapes {cfg}\n")
    print(
        "| backbone | fwd+bwd tokens/s | x LSTM | x torch attn | step us | step x LSTMCell "
        "| peak MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.name} | {r.train_tokens_per_s:,.0f} "
            f"| {r.train_tokens_per_s / lstm.train_tokens_per_s:.2f} | "
            f"{r.train_tokens_per_s / attn.train_tokens_per_s:.3f} | {r.step_us:.0f} | "
            f"{r.step_us / lstm.step_us:.1f} | {r.peak_mem_mib:.0f} |"
        )
    if args.json:
        record = {"device": where, "shapes": cfg, "rows": [asdict(r) for r in rows]}
        atomic_write_text(args.json, json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
