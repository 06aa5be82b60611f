"""What a run tells about SLURM: which job it is and how often SLURM restarted it, and submitit's sacct noise.

A job requeued at its time limit (submitit's `scontrol requeue`), preempted or requeued by hand runs the
same command again with SLURM_RESTART_COUNT one higher; crdiff logs it and keeps it in every row's
provenance, so a user sees that a result took several tries. Rank and rendezvous come from
`crdiff.experiment.distributed`, not from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger("crdiff")
SACCT_HELP = ("sacct failed: this SLURM keeps no accounting, so submitit cannot read job states and waits for each "
              "job's result file. A job that ends without one (scancel, a node failure) leaves this command waiting: "
              "stop it (Ctrl-C) and run it again, finished images are kept. Later sacct errors are not shown "
              "(docs/scale-out.md, 'On a real SLURM cluster').")


def job(environ: Mapping[str, str] | None = None) -> dict[str, str | int] | None:
    """This process's SLURM job (`<array job>_<task>` for an array task, as squeue shows it) and its
    restart count; None outside SLURM."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        return None
    job_id = env["SLURM_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return {"job_id": job_id, "restart_count": int(env.get("SLURM_RESTART_COUNT", "0"))}


def log_restarts(environ: Mapping[str, str] | None = None) -> None:
    """One line when this job is a restart: the user sees that the job was requeued and that it resumes."""
    this = job(environ)
    if this and this["restart_count"]:
        n = this["restart_count"]
        log.info("crdiff: SLURM job %s restarted %d time%s (time limit, preemption or requeue); resuming, "
                 "finished images are skipped", this["job_id"], n, "" if n == 1 else "s")


class _SacctOnce(logging.Filter):
    """Let submitit's first "Bypassing sacct error" through as SACCT_HELP, drop the repeats (one per poll)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = f"{record.getMessage()}\n{SACCT_HELP}", None
        return True


def quiet_sacct() -> None:
    """Install the filter on submitit's logger (before Hydra's launcher polls; idempotent)."""
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, _SacctOnce) for f in logger.filters):
        logger.addFilter(_SacctOnce())
