"""umpo-dist: distributed uncertainty-aware model-based policy optimisation."""

__version__ = "0.1.0"


def load_policy(path):
    """A trained policy from `policy.pt`, a checkpoint or a run directory (see `umpo_dist.ops.artifacts`)."""
    from umpo_dist.ops.artifacts import load_policy as load

    return load(path)
