"""The repository stands alone: no file points outside it, and its docs point at what exists."""

import re
import subprocess
from pathlib import Path

import pytest

from crdiff.experiment import keys

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = [s.encode() for s in ("../" + "shared", "shared/" + "reference")]  # split: this file is tracked too


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout ({err})")
    return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def test_no_tracked_file_points_outside_the_repository():
    offenders = [str(f.relative_to(ROOT)) for f in tracked_files() if any(s in f.read_bytes() for s in OUTSIDE)]
    assert not offenders, f"files referring to the project's private notes instead of docs/: {offenders}"


def test_method_references_name_docs_method_md_and_an_existing_section():
    sections = set(re.findall(r"^## §(\d+) ", (ROOT / "docs" / "method.md").read_text(), re.M))
    assert sections == {"1", "2", "3", "4", "5", "6"}
    bad = []
    for file in tracked_files():
        if file.suffix not in (".py", ".md", ".yaml", ".sh", ".toml", ".ipynb") and file.name != "Makefile":
            continue
        inside_docs = file.parent == ROOT / "docs"
        for match in re.finditer(r"(\S*)method\.md §(\d+)", file.read_text(encoding="utf-8")):
            prefix, section = match.groups()
            if section not in sections or not (inside_docs or prefix.endswith("docs/")):
                bad.append(f"{file.relative_to(ROOT)}: {match.group(0)}")
    assert not bad, f"write `docs/method.md §N` with N in {sorted(sections)}: {bad}"


def test_relative_links_of_the_readme_and_docs_exist():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path = target.split("#")[0]
            if path and "://" not in path and not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_config_reference_lists_every_field_left_out_of_run_keys():
    text = (ROOT / "docs" / "config.md").read_text()
    missing = sorted(name for name in keys.EXCLUDED if f"`{name}`" not in text)
    assert not missing, f"docs/config.md does not mention these EXCLUDED run-key fields: {missing}"
