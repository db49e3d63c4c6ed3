"""Per-row table of the study: average performance and forgetting as each run's metrics.json has
them (the project's definitions, hope_agent.metrics), the diagonal (perf[i, i]) and task 1 at the
end (perf[-1, 0]) from its perf_matrix.csv; mean over seeds with a 90% percentile bootstrap
(4000 resamples, seed 0). Run from this folder: python table.py [FOLDER ...] (default runs;
runs_cpu holds the task-heads runs of the 2-core CPU machine); the runs of every folder named are
pooled by label."""

import csv
import glob
import json
import os
import random
import statistics as st
import sys
from collections import defaultdict

LABELS = {
    "hope_finetune": "HOPE, fine-tuning",
    "hope_snapshot": "HOPE, snapshot replay (coef 5)",
    "hope_snapshot_c2": "HOPE, snapshot replay (coef 2)",
    "hope_snapshot_chunks": "HOPE, snapshot replay, old store (chunks, no renormalisation)",
    "hope_finetune_hidden": "HOPE, fine-tuning, task id hidden",
    "hope_snapshot_hidden": "HOPE, snapshot replay, task id hidden",
    "gru_finetune": "GRU, fine-tuning",
    "gru_snapshot": "GRU, snapshot replay",
    "mlp_finetune": "MLP, fine-tuning",
    "mlp_snapshot": "MLP, snapshot replay",
    "hope_nocms_finetune": "HOPE without CMS, fine-tuning",
    "hope_heads_finetune": "HOPE with task heads, fine-tuning",
    "hope_heads_snapshot": "HOPE with task heads, snapshot replay",
}


def ci(xs: list[float]) -> str:
    rng = random.Random(0)
    means = sorted(st.mean(rng.choices(xs, k=len(xs))) for _ in range(4000))
    return f"{st.mean(xs):.2f} [{means[200]:.2f}, {means[3799]:.2f}]"


runs: dict[str, list[dict[str, float]]] = defaultdict(list)
folders = sys.argv[1:] or ["runs"]
for d in sorted(d for folder in folders for d in glob.glob(f"{folder}/*__s*/")):
    with open(d + "perf_matrix.csv") as f:
        rows = list(csv.reader(f))[1:]
    m = [[float(x) if x else 0.0 for x in r[1:]] for r in rows]
    with open(d + "metrics.json") as f:
        metrics = json.load(f)
    runs[os.path.basename(d.rstrip("/")).split("__")[0]].append(
        {
            "avg": metrics["average_performance"],
            "forgetting": metrics["forgetting"],
            "diag": st.mean(m[i][i] for i in range(len(m))),
            "first": m[-1][0],
        }
    )
print("| row | seeds | avg perf ↑ | forgetting ↓ | diagonal | task 1 at the end |")
print("|---|---|---|---|---|---|")
for key, label in LABELS.items():
    v = runs.get(key)
    if not v:
        continue
    cells = [ci([r[k] for r in v]) for k in ("avg", "forgetting", "diag", "first")]
    print(f"| {label} | {len(v)} | " + " | ".join(cells) + " |")
