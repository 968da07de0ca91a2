"""Fidelity studies: analyses of finished ``experiments.reproduce`` runs and of the embedded
benchmark's calibration (what D-Conv sees, which layers carry the teacher, more student variants).
Results and commands: FIDELITY.md."""
