"""Depth-aware operators: convolution, similarity windows, pooling, depth resizing (SPEC §1, §4)."""
