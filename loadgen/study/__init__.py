"""MANY runs: sweeps, peak search, capacity plans, A/B comparison."""
