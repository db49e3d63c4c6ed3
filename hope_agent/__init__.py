"""hope_agent: lifelong-learning robot agents on a HOPE (Nested Learning) backbone."""

__version__ = "0.1.0"
