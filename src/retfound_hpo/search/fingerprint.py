"""What a study's trials were made from: a fingerprint of everything that changes their results.

A trial's value depends on the prepared train and val images, the checkpoint's weights (its
content, not its path), the architecture and every model and training setting, the seed, the
search space, the objective and the epoch budget. The study records this fingerprint when it is
created; a run whose inputs differ never reuses its trials (see study.open_study).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.params import HpoConfig, ModelConfig, TrainConfig
from retfound_hpo.training.inputs import CachedImages

log = logging.getLogger(__name__)

# train.* keys that say how a trial runs, not what it computes.
EXECUTION_ONLY = ("num_workers", "device", "eval_batch_size")
CHUNK = 1 << 24  # bytes hashed per read


def file_digest(path: str | Path) -> str:
    """BLAKE2b of a file's bytes, in hex."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_digest(data: CachedImages) -> str:
    """A digest of what training sees of a set: its pixels and its grades, in order. The same
    for an array in memory and for prepared images read from disk."""
    digest = hashlib.blake2b(digest_size=16)
    images = data.images
    step = max(1, CHUNK // max(1, int(np.prod(images.shape[1:]))))  # images per read
    for start in range(0, len(images), step):
        digest.update(np.ascontiguousarray(images[start : start + step], dtype=np.uint8).data)
    digest.update(np.ascontiguousarray(data.grades, dtype=np.int64).data)
    return digest.hexdigest()


def study_fingerprint(
    model: ModelConfig,
    train_cfg: TrainConfig,
    hpo: HpoConfig,
    seed: int,
    train: CachedImages,
    val: CachedImages,
) -> dict[str, Any]:
    """Everything a trial's result depends on, as plain JSON values (digests for data)."""
    start = time.perf_counter()
    m, t, h = model, train_cfg, hpo
    checkpoint = Path(m.checkpoint)
    if checkpoint.is_dir():
        raise CheckpointError(
            f"{checkpoint}: a folder, not a checkpoint file; set model.checkpoint to the .pth in it"
        )
    if not checkpoint.is_file():
        raise CheckpointError(f"model.checkpoint: {checkpoint} not found")
    fingerprint = {
        "data.train": dataset_digest(train),
        "data.val": dataset_digest(val),
        "model.checkpoint": file_digest(checkpoint),
        **{
            f"model.{k}": _plain(v)
            for k, v in dataclasses.asdict(m).items()
            if k != "checkpoint"  # its content counts; moving the file changes nothing
        },
        **{
            f"train.{k}": _plain(v)
            for k, v in dataclasses.asdict(t).items()
            if k not in EXECUTION_ONLY
        },
        "seed": seed,
        "hpo.search_space": _plain(h.search_space),
        "hpo.metric": h.metric,
        "hpo.multi_objective": h.multi_objective,
        "hpo.num_epochs": h.num_epochs,
        "hpo.early_stopping_patience": h.early_stopping_patience,
    }
    log.info("fingerprinted the search's inputs in %.1f s", time.perf_counter() - start)
    return fingerprint


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short name for a fingerprint: 8 hex digits."""
    text = json.dumps(fingerprint, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def describe_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What differs between two fingerprints, for a log line or an error message."""
    if old is None:
        return "the study predates input fingerprints, so what its trials were run on is unknown"
    changed = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key.startswith("data.") or key == "model.checkpoint":
            what = "prepared images" if key.startswith("data.") else "content"
            changed.append(f"{key} ({what})")
        elif isinstance(before, dict | list) or isinstance(after, dict | list):
            changed.append(key)
        else:
            changed.append(f"{key}: {before!r} -> {after!r}")
    return ", ".join(changed)


def _plain(value: Any) -> Any:
    """Tuples as lists, as JSON (and the study's storage) gives them back."""
    return json.loads(json.dumps(value))
