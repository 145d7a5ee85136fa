"""Optional Weights & Biases logging: one run per trial, grouped by study. Never fatal."""

from __future__ import annotations

import logging
import os
from typing import Any

from retfound_hpo.core.params import WandbConfig

log = logging.getLogger(__name__)


def start_trial_run(
    cfg: WandbConfig, group: str, name: str | int, hparams: dict[str, Any]
) -> Any | None:
    """A wandb run for one trial, in the study's `group` (None when disabled or wandb fails)."""
    if not cfg.enabled:
        return None
    os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user set online mode
    try:
        import wandb

        return wandb.init(
            project=cfg.project,
            group=group,
            name=f"trial-{name}" if isinstance(name, int) else name,
            config=hparams,
            reinit="finish_previous",
        )
    except Exception as err:  # logging must never stop a search
        log.warning("wandb disabled for this run: %s", err)
        return None


def log_epoch(run: Any | None, row: dict[str, float]) -> None:
    if run is None:
        return
    try:
        run.log(row, step=int(row["epoch"]))
    except Exception as err:
        log.warning("wandb log failed: %s", err)


def finish(run: Any | None) -> None:
    if run is None:
        return
    try:
        run.finish()
    except Exception as err:
        log.warning("wandb finish failed: %s", err)
