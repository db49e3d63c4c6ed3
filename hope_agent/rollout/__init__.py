"""Acting in environments: the episode driver, vector envs, env-side fault handling."""
