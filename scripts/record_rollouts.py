"""Thin entry point: see hope_agent.cli.record_main (also installed as a console script)."""

from hope_agent.cli import record_main

if __name__ == "__main__":
    record_main()
