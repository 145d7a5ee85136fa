"""What hpo.n_trials counts, and when trials fail the way every trial would.

The budget counts every trial a worker started, except a failed trial that a retry replaced
(it counts once), a trial cut off by its worker's end (Ctrl-C, SIGTERM from a scheduler, a
kill or a lost machine: someone else runs one in its place) and a trial spoiled by a setup
mistake: a bad input met inside a trial, or one failure repeated word for word. Those stop the
search instead, and cost nothing: a rerun after the fix runs the whole budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from retfound_hpo.core.errors import UserError
from retfound_hpo.search.strategy import FINISHED


@dataclass
class Budget:
    counted: int  # trials that use up hpo.n_trials (a retried trial counts once)
    finished: int
    running: int
    waiting: int  # queued by a retry (or by hand): run before any new trial


# A failure that repeats this many times in a row, word for word, would fail every trial.
REPEATED_FAILURES = 3
UNCOUNTED = "uncounted_trial_"  # study attribute prefix: trials hpo.n_trials leaves out


class SearchStopped(UserError):
    """Trials fail for a reason that would fail every trial: stop, and do not count them."""


def superseded_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that a retry replaced: each retry lists its forerunners."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def mark_uncounted(study: optuna.Study, number: int, reason: str) -> None:
    """Leave trial `number` out of hpo.n_trials: it was cut off (its worker was interrupted,
    killed or lost) or failed the way every trial would."""
    study.set_user_attr(f"{UNCOUNTED}{number}", reason)


def uncounted_numbers(study: optuna.Study, trials: list[FrozenTrial]) -> set[int]:
    """Trials that failed for a reason that fails every trial: fixing it must cost nothing."""
    marked = {int(k.removeprefix(UNCOUNTED)) for k in study.user_attrs if k.startswith(UNCOUNTED)}
    return marked | {t.number for t in trials if t.user_attrs.get("setup_error")}


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials less those a retry replaced or a setup failure spoiled: what
    hpo.n_trials counts."""
    trials = study.get_trials(deepcopy=False)
    left_out = superseded_numbers(trials) | uncounted_numbers(study, trials)
    return [t for t in trials if t.number not in left_out]


def budget(study: optuna.Study) -> Budget:
    trials = counted_trials(study)
    return Budget(
        counted=len(trials),
        finished=sum(t.state in FINISHED for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
    )


class StopOnSetupFailure:
    """Optuna callback: stop the worker when a trial fails the way every trial would.

    A bad input met inside a trial (the objective marks it `setup_error`) stops at once; any
    other failure stops when it repeats word for word REPEATED_FAILURES times in a row (out of
    memory excepted: it depends on the trial's batch size). Those trials are not counted, so a
    rerun after the fix runs the whole budget."""

    def __init__(self) -> None:
        self.repeats: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = trial.user_attrs.get("fail_reason") or ""
        if trial.state != TrialState.FAIL or reason.startswith(("out of memory", "interrupted")):
            self.repeats.clear()
            return
        if trial.user_attrs.get("setup_error"):
            raise SearchStopped(f"trial {trial.number}: {reason} (not counted: fix it and rerun)")
        same = [t for t in self.repeats if t.user_attrs.get("fail_reason") == reason]
        self.repeats = [*same, trial]
        if len(self.repeats) >= REPEATED_FAILURES:
            for t in self.repeats:
                mark_uncounted(study, t.number, reason)
            numbers = [t.number for t in self.repeats]
            raise SearchStopped(
                f"trials {numbers} failed with the same error, as every trial would: {reason}; "
                "search stopped (these trials are not counted: fix it and rerun)"
            )


def to_run(study: optuna.Study, n_trials: int) -> int:
    """Trials left to start: the budget's (hpo.n_trials) remainder and any queued retries."""
    left = budget(study)
    return max(0, n_trials - left.counted) + left.waiting
