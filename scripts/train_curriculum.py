"""Thin entry point: see hope_agent.cli.train_main (also installed as a console script)."""

from hope_agent.cli import train_main

if __name__ == "__main__":
    train_main()
