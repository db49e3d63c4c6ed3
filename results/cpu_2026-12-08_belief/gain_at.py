"""Trial gain of `adapt` runs at one evaluation, per seed and over seeds (90% bootstrap CI over
the seeds), read from each run's `curves.csv`: the last evaluation at or before STEP (+1%, for
the rollout granularity), so that runs of different budgets are compared at the same budget.

Usage: python gain_at.py STEP LABEL=RUN_DIR[,RUN_DIR...] [LABEL=...]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from hope_agent.metrics import bootstrap_ci


def row_at(run: Path, step: int) -> dict[str, str]:
    """The `curves.csv` row of the last evaluation at or before `step` (+1%)."""
    rows = [r for r in csv.DictReader((run / "curves.csv").open()) if r["trial_gain"]]
    before = [r for r in rows if int(r["global_step"]) <= step * 1.01]
    if not before:
        raise SystemExit(f"{run}: no evaluation at or before step {step}")
    return max(before, key=lambda r: int(r["global_step"]))


def main() -> None:
    step = int(sys.argv[1])
    for arg in sys.argv[2:]:
        label, dirs = arg.split("=", 1)
        gains, learned = [], 0
        for d in dirs.split(","):
            r = row_at(Path(d), step)
            gain, low, high = (float(v) for v in r["trial_gain"].split(";"))
            sub = " / ".join(f"{float(s):.2f}" for s in r["sub_episode_success"].split(";"))
            ci = f"{gain:.3f} [{low:.2f}, {high:.2f}]"
            print(f"| {label} | {d} | {r['global_step']} | {sub} | {ci} |")
            gains.append(gain)
            learned += gain >= 0.3
        mean, low, high = bootstrap_ci(gains)
        print(
            f"{label}: {len(gains)} seeds, trial gain {mean:.3f} [{low:.2f}, {high:.2f}], "
            f"{learned} with a gain >= 0.3"
        )


if __name__ == "__main__":
    main()
