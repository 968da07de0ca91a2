"""Benchmarks: speed and memory of the ops, the training step, the input pipeline, the loop and the
test suite, on CPU and on a GPU (``bench_gpu``). Results and commands: BENCHMARKS.md."""
