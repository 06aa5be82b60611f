"""The miniatures: text-to-image models of SD's classes that crdiff trains, ships and studies offline
(`digits`, SD1.5's regime; `scenes`, SDXL's regime)."""

from __future__ import annotations

from pathlib import Path

BUNDLED = ("digits", "scenes")


def bundled(name: str) -> tuple[Path, str]:
    """A bundled model's pipeline folder and the command that rebuilds it."""
    if name == "digits":
        from crdiff.miniature import digits as module
    elif name == "scenes":
        from crdiff.miniature import scenes as module
    else:
        raise ValueError(f"unknown bundled model {name!r}; valid choices: {list(BUNDLED)}")
    return module.PIPELINE_DIR, module.TRAIN_COMMAND
