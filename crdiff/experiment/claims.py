"""Claims with leases: processes that share an output_dir (ranks, sweep jobs, array tasks, the same
command started twice) each make an image only after claiming it, so every image is made once.

A claim is a file `<folder>/.claims/<index>.<generation>` created with O_CREAT|O_EXCL (atomic on
local and NFS v3+ filesystems), holding host, pid and time. Its holder renews the lease by touching
it; a claim whose mtime is older than `lease_s`, or whose holder is a dead process on this host, is
stale: the next claimer creates generation + 1 (again O_EXCL, so one taker wins) and removes the old.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

HOST = socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class Claims:
    """This process's claims on images of one folder (claim, renew while working, release)."""

    def __init__(self, folder: Path, lease_s: float) -> None:
        self.dir, self.lease_s = Path(folder) / ".claims", lease_s
        self.held: dict[int, Path] = {}

    def _current(self, index: int) -> tuple[int, Path] | None:
        """The newest claim on `index` (generation, path), or None."""
        gens = [(int(m[1]), p) for p in self.dir.glob(f"{index:05d}.*") if (m := re.fullmatch(r"\d+\.(\d+)", p.name))]
        return max(gens) if gens else None

    def stale(self, path: Path) -> bool:
        """Expired lease, or held by a process of this host that is gone (a killed run's claims)."""
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:  # released right now: not ours to take
            return False
        if age > self.lease_s:  # whatever it holds: a claim written half by a killed claimer expires too
            return True
        try:
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):  # released or being written right now
            return False
        return holder.get("host") == HOST and holder.get("pid") != os.getpid() and not _alive(holder.get("pid", 0))

    def claim(self, index: int) -> bool:
        """Claim image `index`; False if another live process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        current = self._current(index)
        if current is not None and not self.stale(current[1]):
            return False
        path = self.dir / f"{index:05d}.{0 if current is None else current[0] + 1}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask decides
        except FileExistsError:  # another process claimed or took over first
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": HOST, "pid": os.getpid(), "time": time.time()}, f)
        if current is not None:
            current[1].unlink(missing_ok=True)
        self.held[index] = path
        return True

    def release(self, index: int) -> None:
        self.held.pop(index).unlink(missing_ok=True)

    def renew(self) -> None:
        for path in list(self.held.values()):
            try:
                os.utime(path)
            except FileNotFoundError:  # taken over after our lease ran out; the image write stays atomic
                pass

    def renewing(self) -> _Renewer:
        """`with claims.renewing():` keeps the held leases alive (a thread touches them every lease/4)."""
        return _Renewer(self)


class _Renewer:
    def __init__(self, claims: Claims) -> None:
        self.claims, self.stop = claims, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.claims.lease_s / 4):
            self.claims.renew()

    def __enter__(self) -> Claims:
        self.thread.start()
        return self.claims

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
