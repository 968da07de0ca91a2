"""Data helpers: numpy transforms of RGB-D examples (``transforms``); grain pipelines live in
``drd_jax.input_pipeline``."""
