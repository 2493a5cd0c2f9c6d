"""The engine: train / eval / forward loops, updater, checkpoints and learning-rate control."""
