"""Datasets (RETURNN dataset dicts) and the pipeline that turns them into padded batches."""
