"""Fingerprint what the training loop does, to show that a refactor changed no behaviour.

    python tests/behaviour_fingerprint.py                      # print the fingerprint as JSON
    python tests/behaviour_fingerprint.py --expect FILE.json   # exit 1 where it differs

Runs, in fresh interpreters, a fixed-seed deterministic CPU run of the ``fast`` curriculum's
first two tasks with a small budget (HOPE, in-context gain and a video on) and the SB3 PPO
baseline on the same two tasks, then hashes each run's ``perf_matrix.csv``, ``curves.csv`` and
``train.csv`` (the wall-time columns excluded). Byte-identical files before and after a change
mean the acting, evaluation and update paths did the same arithmetic. The figures depend on the
machine and the torch build: compare fingerprints taken on one machine.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = (
    "curriculum.tasks=[{id:hope/PointReach-v0,kwargs:{goal:[0.6,0.0]},name:reach_east},"
    "{id:hope/PointReach-v0,kwargs:{goal:[-0.6,0.0]},name:reach_west}]"
)
COMMON = [TASKS, "steps_per_task=2048", "eval.every=1024", "eval.episodes=2", "seed=3"]
RUNS = {
    "hope": (
        "train_curriculum.py",
        [
            *COMMON,
            "device=cpu",
            "ppo.num_envs=4",
            "ppo.rollout_len=64",
            "eval.in_context_gain=true",
            "video.episodes=1",
            "video.height=32",
            "video.width=32",
            "logger.tensorboard=false",
            "logger.progress=false",
        ],
    ),
    "sb3_ppo": ("train_sb3.py", [*COMMON, "video.enabled=false"]),
}
# Columns that hold wall-clock figures, which no two runs share.
_TIMING = ("time", "sps", "wall")


def _stable_csv(path: Path) -> str:
    """``path``'s CSV text without its timing columns."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows:
        return ""
    keep = [i for i, name in enumerate(rows[0]) if not any(t in name.lower() for t in _TIMING)]
    return "\n".join(",".join(row[i] for i in keep if i < len(row)) for row in rows)


def fingerprint(work: Path) -> dict[str, dict[str, str]]:
    """Run every entry of :data:`RUNS` under ``work`` and hash its result files."""
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONHASHSEED": "0"}
    out: dict[str, dict[str, str]] = {}
    for label, (script, overrides) in RUNS.items():
        run_dir = work / label
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / script),
            *overrides,
            f"hydra.run.dir={run_dir}",
        ]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{label}: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        out[label] = {}
        for name in ("perf_matrix.csv", "curves.csv", "train.csv"):
            path = run_dir / name
            if path.is_file():
                text = _stable_csv(path)
                out[label][name] = hashlib.sha256(text.encode()).hexdigest()
    return out


def main() -> None:
    """Print the fingerprint; with ``--expect``, compare it with a stored one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expect", type=Path, help="a fingerprint JSON to compare against")
    parser.add_argument("--out", type=Path, help="write the fingerprint JSON here")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep the runs")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        got = fingerprint(args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            got = fingerprint(Path(tmp))
    text = json.dumps(got, indent=2, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.expect is not None:
        want = json.loads(args.expect.read_text())
        diff = [
            f"{label}/{name}"
            for label in sorted(set(want) | set(got))
            for name in sorted(set(want.get(label, {})) | set(got.get(label, {})))
            if want.get(label, {}).get(name) != got.get(label, {}).get(name)
        ]
        if diff:
            raise SystemExit(f"behaviour changed: {', '.join(diff)} differ from {args.expect}")
        print(f"identical to {args.expect}")


if __name__ == "__main__":
    main()
