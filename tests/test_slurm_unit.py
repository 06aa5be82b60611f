"""crdiff.experiment.slurm without a cluster: the job and restart count from SLURM's variables, and
submitit's sacct warning explained once (tests/test_slurm.py submits real jobs)."""

import logging

from crdiff.experiment import slurm


def test_job_and_restart_count_come_from_slurm_s_variables(caplog):
    assert slurm.job({}) is None
    assert slurm.job({"SLURM_JOB_ID": "7"}) == {"job_id": "7", "restart_count": 0}
    array = {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2", "SLURM_RESTART_COUNT": "3"}
    assert slurm.job(array) == {"job_id": "10_2", "restart_count": 3}
    with caplog.at_level(logging.INFO, logger="crdiff"):
        slurm.log_restarts({"SLURM_JOB_ID": "7"})
        assert not caplog.records  # a first try says nothing
        slurm.log_restarts(array)
    assert caplog.messages == ["crdiff: SLURM job 10_2 restarted 3 times (time limit, preemption or requeue); "
                               "resuming, finished images are skipped"]


def test_sacct_error_is_explained_once():
    logger, seen = logging.getLogger("submitit"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        slurm.quiet_sacct()
        slurm.quiet_sacct()  # idempotent: still one filter
        for call in (1, 2, 3):
            logger.warning(f"Call #{call} - Bypassing sacct error ..., status may be inaccurate.")
        logger.warning("another warning")
    finally:
        logger.removeHandler(handler)
    assert seen == [f"Call #1 - Bypassing sacct error ..., status may be inaccurate.\n{slurm.SACCT_HELP}",
                    "another warning"]
