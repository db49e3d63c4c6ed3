"""Merge run directories into one comparison table, plot and page (CSV, Markdown, PNG, HTML).

    python scripts/compare.py runs/fast__gru__* runs/fast__sb3_ppo__* --out comparison/
    python scripts/compare.py multirun/fast__hope__20261126-101500 --out comparison/
    python scripts/compare.py runs/fast__* --reference single_task/ --out comparison/

Each argument is a run directory or a folder searched for them. Runs are grouped into rows by
their whole config less the seed, each row labelled by the keys in which it differs from the
others (``model.kwargs.cms_periods=[1,4,16]``); ``--reference`` names single-task runs (run
directories or folders of them) whose per-task AUCs give forward transfer. See
:mod:`hope_agent.compare`, ``docs/baselines.md`` and ``docs/report.md``.
"""

import argparse
import sys
from pathlib import Path

from hope_agent.compare import write_comparison


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the comparison, print the Markdown table; 1 on a user error."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or folders of runs")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="output folder")
    parser.add_argument("--confidence", type=float, default=0.9, help="CI level (default 0.9)")
    parser.add_argument("--resamples", type=int, default=4000, help="bootstrap resamples")
    parser.add_argument(
        "--reference",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="single-task runs (one task each, same budget) whose AUCs give forward transfer",
    )
    args = parser.parse_args(argv)
    try:
        write_comparison(args.paths, args.out, args.confidence, args.resamples, args.reference)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((args.out / "comparison.md").read_text(), end="")
    print(f"written: {args.out / 'comparison.csv'}, comparison.md, comparison.png, comparison.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
