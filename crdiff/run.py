"""`python -m crdiff.run <overrides>`: the experiment harness's Hydra entry point (crdiff.experiment.run)."""

from crdiff.experiment.run import cli

if __name__ == "__main__":
    cli()
