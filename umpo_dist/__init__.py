"""umpo-dist: distributed uncertainty-aware model-based policy optimisation."""

__version__ = "0.1.0"
