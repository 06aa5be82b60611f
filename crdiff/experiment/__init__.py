"""The experiment harness: validated configs, methods, sampling, scoring, run keys and results,
distributed / SLURM execution, W&B tracking. Hydra is seen only by `crdiff.run` (the entry point) and the planner's compose helpers."""
