"""HOPE Agent.policy latency on the CPU: default agent (d64, 1 layer, 4 heads, C=8), 8 rows, no
resets, one torch thread; mean of 200 steps after 20, then a profile of 16. Run from the
repository root: python results/cpu_2026-12-03_step/probe_step.py"""
import time, torch
from hope_agent.models.factory import make_backbone
from hope_agent.agents.agent import Agent, AgentConfig
torch.manual_seed(0); torch.set_num_threads(1)
bb = make_backbone("hope", 64, n_layers=1, n_heads=4, chunk_size=8, cms_periods=(1, 16, 256))
agent = Agent(bb, AgentConfig(obs_dim=4, act_dim=2))
B = 8
carry = agent.init_carry(B)
g = torch.Generator().manual_seed(0)
obs = torch.randn(B, 4); pr = torch.zeros(B); isf = torch.zeros(B, dtype=torch.bool)
task = torch.zeros(B, dtype=torch.long)
@torch.no_grad()
def run(n):
    c = carry
    for _ in range(n):
        c, res = agent.policy(c, obs, pr, isf, task=task, generator=g)
    return c
run(20)
t0 = time.perf_counter(); run(200); dt = (time.perf_counter() - t0) / 200
print(f"policy step ms {dt*1e3:.3f}")
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    run(16)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
