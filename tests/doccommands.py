"""Every command the README and docs/*.md show in a fenced block: found by what it runs (`crdiff.run`,
`crdiff-run`, or a `scripts/` file), whatever launcher or shell comment surrounds it, so a command added
or changed in the docs is picked up (and changed) in tests/test_docs_commands.py without editing a list."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# What a command line starts with (after NAME=value settings); other lines of a block are output or trees.
PROGRAMS = ("python", "python3", "torchrun", "srun", "accelerate", "bash", "crdiff-run")


@dataclass(frozen=True)
class Command:
    file: str  # README.md, docs/x.md
    line: str  # as written (continuations joined)
    env: tuple[str, ...]  # NAME=value set before it
    launcher: tuple[str, ...]  # what starts python: torchrun ..., srun ..., accelerate launch ... (may be empty)
    program: str  # "crdiff.run" or the script path
    args: tuple[str, ...]  # Hydra overrides (without -m) or the script's arguments
    multirun: bool = False

    def __str__(self) -> str:
        return f"{self.file}: {self.line}"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def lines(text: str) -> list[str]:
    """Shell lines of the fenced blocks that are not another language (python, yaml, text tables)."""
    out = []
    for language, body in FENCE.findall(text):
        if language not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                out.append(line)
    return out


def parse(file: str, line: str) -> Command | None:
    """The command `line` runs, or None when it runs neither crdiff.run nor a script of scripts/."""
    if not re.search(r"crdiff[.-]run|scripts/", line):
        return None
    first = re.sub(r"^([A-Z_][A-Z0-9_]*=\S*\s+)*", "", line).split(" ", 1)[0]
    if first not in PROGRAMS:
        return None
    tokens = shlex.split(line, comments=True)  # a documented command must parse as the shell parses it
    where = next((i for i, t in enumerate(tokens) if t in ("crdiff.run", "crdiff-run") or t.startswith("scripts/")),
                 None)
    if where is None:
        return None
    env = tuple(t for t in tokens[:where] if re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", t))
    before = [t for t in tokens[:where] if t not in env]
    launcher = tuple(t for t in before if t not in ("python", "python3", "bash", "-m"))
    args = tokens[where + 1:]
    if tokens[where] in ("crdiff.run", "crdiff-run"):
        multirun = "-m" in args or "--multirun" in args
        return Command(file, line, env, launcher, "crdiff.run", tuple(a for a in args if a not in ("-m", "--multirun")),
                       multirun)
    return Command(file, line, env, launcher, tokens[where], tuple(args))


def commands() -> list[Command]:
    found = []
    for path in documents():
        name = str(path.relative_to(ROOT))
        found += [c for line in lines(path.read_text()) if (c := parse(name, line)) is not None]
    return found
