"""ml_collections training configs (``--config=experiments/configs/<name>.py[:variant]``)."""
