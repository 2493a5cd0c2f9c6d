"""Sisyphus jobs that write Mini-RETURNN configs and run them with the runtime next to this package."""

from .training import MiniReturnnTrainingJob  # noqa: F401
