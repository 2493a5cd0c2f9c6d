"""``returnn.datasets.util``."""
