"""Interrupting a worker is normal use: Ctrl-C at a terminal, SIGTERM from a scheduler (scancel,
preemption, the time limit). The trial it was running is recorded FAIL with the reason and is
not counted; Optuna's traceback for it is left out of the log."""

from __future__ import annotations

import logging
import os
import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM: scancel, preemption or the time limit (SLURM), or a plain kill."""


class _NoTracebackForInterrupts(logging.Filter):
    """Optuna logs an interrupted trial with a traceback; interrupting is normal use."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_NoTracebackForInterrupts())


REDELIVER_SECONDS = 2.0
sigterm_received = False  # whatever exception a SIGTERM ended up as


def terminate(signum, frame) -> None:
    """SIGTERM handler: end the way Ctrl-C does (the trial is recorded FAIL, not counted).

    An exception raised in a signal handler is lost when the signal lands in a finalizer or a
    weakref callback (Python prints "Exception ignored in ..." and goes on), and the worker
    would run on until SIGKILL. So it is raised again every REDELIVER_SECONDS (SIGALRM) until
    the worker acknowledges it."""
    global sigterm_received
    sigterm_received = True
    signal.signal(signal.SIGALRM, terminate)
    signal.setitimer(signal.ITIMER_REAL, REDELIVER_SECONDS, REDELIVER_SECONDS)
    raise Terminated()


def acknowledge() -> None:
    """The interruption reached the worker's handler: stop raising it again."""
    signal.setitimer(signal.ITIMER_REAL, 0)


def slurm_task() -> str | None:
    """This process's SLURM array task, "<job>_<index>", if it is one."""
    job, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{index}" if job and index else None


def interrupted_reason(err: KeyboardInterrupt) -> str:
    """The fail_reason of a trial cut off by `err`."""
    if isinstance(err, Terminated) or sigterm_received:
        return "interrupted (SIGTERM: cancelled, preempted or out of time)"
    return "interrupted (Ctrl-C)"
