"""Tools for developing drd-jax: fault probes of the command-line tools, the kill -9 resume soak,
and temporary git worktrees for benchmarks that compare revisions."""
