"""HOPE ``Agent.policy`` latency on the CPU.

The default agent (d64, 1 layer, 4 heads, C=8) with 8 rows and no episode starts, one torch
thread; the mean of 200 steps after 20 untimed ones, then a profile of 16 steps. Run from the
repository root: ``python results/cpu_2026-12-03_step/probe_step.py``.
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from hope_agent.agents.actor import AgentState
from hope_agent.agents.agent import Agent, AgentConfig
from hope_agent.models.factory import make_backbone

ROWS = 8


@torch.no_grad()
def run(agent: Agent, carry: AgentState, steps: int) -> AgentState:
    """``steps`` policy steps from ``carry`` on fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    obs, reward = torch.randn(ROWS, 4), torch.zeros(ROWS)
    first, task = torch.zeros(ROWS, dtype=torch.bool), torch.zeros(ROWS, dtype=torch.long)
    for _ in range(steps):
        carry, _ = agent.policy(carry, obs, reward, first, task=task, generator=generator)
    return carry


def main() -> None:
    """Print the mean step latency and the profile's top ops."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    backbone = make_backbone("hope", 64, n_layers=1, n_heads=4, chunk_size=8)
    agent = Agent(backbone, AgentConfig(obs_dim=4, act_dim=2))
    carry = run(agent, agent.init_carry(ROWS), 20)
    start = time.perf_counter()
    run(agent, carry, 200)
    print(f"policy step ms {(time.perf_counter() - start) / 200 * 1e3:.3f}")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(agent, carry, 16)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
