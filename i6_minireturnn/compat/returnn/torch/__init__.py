"""``returnn.torch``: the PyTorch engine and run context."""
