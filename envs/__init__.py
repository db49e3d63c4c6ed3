"""hope_envs: MuJoCo task families, curricula and wrappers for continual RL with hope_agent.

Importing this package registers every task under the `hope/` Gymnasium namespace:
`gymnasium.make("hope/PointReach-v0", goal=[0.6, 0.0])`. `registered_ids()` lists them; the
curriculum machinery (task specs, common spaces, env factory, reference returns) is in
`hope_envs.curriculum`.
"""

from hope_envs.registration import register_envs, registered_ids

register_envs()

__all__ = ["registered_ids"]
