"""What every stage script shares: offline defaults, logging, and one-line errors for bad input."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from retfound_hpo.core.errors import UserError


def run_stage(main: Callable[[], None], prefix: str | None = None) -> None:
    """Run a stage's main(); a user error ends it with one clear line and exit code 2."""
    # No network here: timm would retry the hub for ~47 s, wandb would look up its server.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {prefix + ' ' if prefix else ''}%(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("optuna").setLevel(logging.INFO)
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
