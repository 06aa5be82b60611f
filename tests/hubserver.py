"""A hub-protocol server on 127.0.0.1 for the tests: olah (PyPI) in its offline git-mirror mode serves
plain git repositories laid out as `<root>/models/<org>/<name>` (branch `main`) to huggingface_hub through
`HF_ENDPOINT`, exactly as the real hub serves `snapshot_download` / `hf_hub_download`; and a file server
for the weights that do not come from the hub (crdiff's documented `CRDIFF_WEIGHTS_URL` mirror).

What is real and what is a stand-in is up to the caller (tests/test_hub_journeys.py says it per piece):
the repository ids, file names, revisions, cache layout and protocol are real; the bytes are whatever
the test commits.
"""

from __future__ import annotations

import functools
import http.server
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

GIT = ["git", "-c", "user.name=crdiff tests", "-c", "user.email=tests@crdiff.invalid", "-c", "init.defaultBranch=main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_repo(root: Path, repo: str, files: Path | dict[str, bytes]) -> str:
    """Commit `files` (a saved folder, or {relative path: bytes}) as branch `main` of model repo `repo`
    under the mirror `root`; returns the commit (a revision the hub serves, as a pinned model.revision)."""
    folder = Path(root) / "models" / repo
    folder.mkdir(parents=True)
    items = ({str(p.relative_to(files)): p.read_bytes() for p in Path(files).rglob("*") if p.is_file()}
             if isinstance(files, Path) else files)
    for name, data in items.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=folder, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=folder, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", f"{repo} for the tests"], cwd=folder, check=True)
    return subprocess.run([*GIT, "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True,
                          text=True).stdout.strip()


@contextmanager
def hub_server(root: Path, work: Path):
    """olah serving the repositories under `root` on a free loopback port; yields its endpoint URL."""
    port = free_port()
    config = Path(work) / "olah.toml"
    config.write_text(f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{Path(work) / 'olah-repos'}"
mirrors-path = ["{root}"]
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
[accessibility]
offline = true
""")
    log = (Path(work) / "olah.log").open("w")
    olah = Path(sys.executable).with_name("olah-cli")  # installed with the dev extra, beside this python
    server = subprocess.Popen([str(olah), "-c", str(config)], cwd=work, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except urllib.error.HTTPError:  # it answers: up
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"olah did not start: {(Path(work) / 'olah.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def file_server(folder: Path):
    """Plain HTTP for `folder` on a free loopback port (a mirror of weights hosted outside the hub)."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
