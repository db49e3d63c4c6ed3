"""Thin entry point: see hope_agent.cli.evaluate_main (also installed as a console script)."""

from hope_agent.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
