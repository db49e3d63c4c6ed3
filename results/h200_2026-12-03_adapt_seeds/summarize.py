"""Print each run's last train.csv row: steps, env steps/s and the time per phase (seconds)."""

import csv
import sys
from pathlib import Path

for run in sorted(Path(sys.argv[1]).iterdir()):
    path = run / "train.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    if not rows:
        print(run.name, "no rows")
        continue
    last = rows[-1]
    phases = {k[5:]: round(float(v), 1) for k, v in last.items() if k.startswith("time/") and v}
    perf = [r["eval/adapt_en/perf"] for r in rows if r.get("eval/adapt_en/perf")]
    print(
        run.name,
        last["global_step"],
        "sps",
        round(float(last["charts/SPS"])),
        "wall",
        round(float(last["charts/wall_time"])),
        phases,
        "perf",
        perf,
    )
