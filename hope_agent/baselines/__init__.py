"""Baselines that train with other libraries and are evaluated by ours (Stable-Baselines3)."""
