"""Depth-aware operators: convolution, similarity windows, pooling and depth resizing (SPEC §1, §4)."""
