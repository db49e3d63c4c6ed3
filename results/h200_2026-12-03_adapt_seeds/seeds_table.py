"""Final trial gain of `adapt` runs, per seed and over seeds (90% bootstrap CI over the seeds).

Usage: python seeds_table.py LABEL=RUN_DIR[,RUN_DIR...] [LABEL=...]
Each RUN_DIR holds a run's `metrics.json` (one `adapt` task).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hope_agent.metrics import bootstrap_ci


def main() -> None:
    for arg in sys.argv[1:]:
        label, dirs = arg.split("=", 1)
        gains, kept_reset = [], []
        for d in dirs.split(","):
            m = json.loads((Path(d) / "metrics.json").read_text())
            (task,) = m["sub_episode_success"]
            sub = " / ".join(f"{s:.2f}" for s in m["sub_episode_success"][task])
            g = m["trial_gain_per_task"][task]
            print(
                f"| {label} | {d} | {sub} | {g[0]:.3f} [{g[1]:.2f}, {g[2]:.2f}] | "
                f"{m['in_context_gain']:.2f} |"
            )
            gains.append(g[0])
            kept_reset.append(m["in_context_gain"])
        mean, low, high = bootstrap_ci(gains)
        kr = bootstrap_ci(kept_reset)
        print(
            f"{label}: {len(gains)} seeds, trial gain {mean:.3f} [{low:.2f}, {high:.2f}], "
            f"memory kept - reset {kr[0]:.2f} [{kr[1]:.2f}, {kr[2]:.2f}]"
        )


if __name__ == "__main__":
    main()
