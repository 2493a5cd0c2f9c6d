"""Mini-RETURNN runtime: runs RETURNN/Mini-RETURNN-style PyTorch configs (train, eval, forward)."""

__version__ = "0.2.0"
