"""`retfound-predict`: grade new fundus photographs with a trained model.

    retfound-predict models/best_model path/to/images/ predictions.csv
    retfound-predict models/best_model images.csv predictions.csv

The input is a folder of images (.png, .jpg, .jpeg, .tif, .tiff, .bmp; not its subfolders) or a
CSV with a `path` column (relative paths are read from the current directory) and an optional
`id` column. Every image gets the pipeline's own preprocessing (crop to the retina disc, square,
resize to the model's input size, its backbone's normalisation), so grades match what
evaluate-cross-dataset reports. The model is a folder written by train-best (a PEFT adapter, a
full state dict or a head, as model.adaptation delivers) or by `retfound-export` (merged).
The output CSV has id, path, pred_grade, one probability column per grade, and `ungradable`
with its reason: an image that cannot be a fundus photograph (too small, a strip, blank, no
retina found) gets no grade rather than a made-up one. An existing output is never replaced.
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from tqdm import tqdm

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.errors import CheckpointError, DatasetError
from retfound_hpo.core.files import write_text_atomic
from retfound_hpo.data.preprocess import NoRetinaError, preprocess_image
from retfound_hpo.model.saved import WHAT, delivery_files, load_trained_model, read_model_config
from retfound_hpo.training.device import resolve_device
from retfound_hpo.training.inference import predict_proba

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CHUNK_IMAGES = 512  # preprocessed then graded at a time: memory stays flat on large folders


def list_images(source: str | Path) -> pd.DataFrame:
    """Table `id, path` of the images to grade, from a folder or a CSV with a `path` column."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DatasetError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return pd.DataFrame({"id": [p.stem for p in paths], "path": [str(p) for p in paths]})
    if not source.is_file():
        raise DatasetError(f"{source}: no such folder or CSV file")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        raise DatasetError(f"{source}: an image; give its folder, or a CSV with a 'path' column")
    try:
        table = pd.read_csv(source, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{source}: empty file (no header, no rows)") from None
    except (ValueError, OSError) as err:  # ParserError, UnicodeDecodeError (a binary file), ...
        raise DatasetError(f"{source}: not a readable CSV ({err})") from None
    if "path" not in table.columns:
        raise DatasetError(f"{source}: needs a 'path' column; found {list(table.columns)}")
    if table.empty:
        raise DatasetError(f"{source}: no rows")
    ids = table["id"] if "id" in table.columns else table["path"].map(lambda p: Path(p).stem)
    return pd.DataFrame({"id": ids, "path": table["path"]})


def load_model(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """A model folder of any adaptation, or a merged export, in eval mode, with its config."""
    model_dir = Path(model_dir)
    cfg, config = read_model_config(model_dir)  # first: a folder that is no model folder says so
    files = delivery_files(config)
    missing = [name for name in files if not (model_dir / name).is_file()]
    if missing:
        what = (
            "the merged export retfound-export writes"
            if config.get("merged")
            else f"{WHAT[cfg.adaptation]} train-best writes for model.adaptation {cfg.adaptation}"
        )
        raise CheckpointError(f"{model_dir}: no model weights: no {' and '.join(missing)} ({what})")
    return load_trained_model(model_dir)


def _preprocess(path: str, size: int) -> np.ndarray | str:
    """The model's input for one image, or why it cannot be graded: not a fundus photograph,
    or not an image at all (one corrupt file among thousands must not stop the rest)."""
    try:
        return preprocess_image(path, size)
    except NoRetinaError as err:
        return str(err)
    except Exception as err:  # PIL raises OSError, ValueError, DecompressionBombError, ...
        return f"cannot read image ({err})"


def grade_images(
    model: nn.Module,
    table: pd.DataFrame,
    input_size: int,
    batch_size: int = 64,
    device: str = "auto",
    amp: str = "auto",
) -> pd.DataFrame:
    """Preprocess and grade every image of `table` (id, path): id, path, pred_grade, prob_*,
    ungradable, reason (an ungradable image has no grade and no probabilities)."""
    model.to(resolve_device(device))
    paths = table["path"].tolist()
    probs, reasons = [], []
    bar = tqdm(total=len(paths), desc="grade", unit="img", disable=None)
    # Threads: PIL decodes and resizes without holding the GIL, and nothing is pickled.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool, bar:
        for start in range(0, len(paths), CHUNK_IMAGES):
            chunk = paths[start : start + CHUNK_IMAGES]
            done = list(pool.map(_preprocess, chunk, [input_size] * len(chunk)))
            reasons += [d if isinstance(d, str) else "" for d in done]
            images = [d for d in done if not isinstance(d, str)]
            if images:
                probs.append(
                    predict_proba(model, np.stack(images), batch_size, amp=amp, desc="batches")
                )
            bar.update(len(chunk))
    gradable = np.array([not r for r in reasons], dtype=bool)  # (N,)
    graded = np.concatenate(probs) if probs else None  # (N gradable, C)
    num_classes = graded.shape[1] if probs else model.get_classifier().out_features
    full = np.full((len(paths), num_classes), np.nan)  # (N, C), NaN where ungradable
    if probs:
        full[gradable] = graded
    grade = pd.Series(full.argmax(axis=1), dtype="Int64").where(gradable)
    out = pd.DataFrame({"id": table["id"].to_numpy(), "path": paths, "pred_grade": grade})
    for c in range(num_classes):
        out[f"prob_{c}"] = full[:, c].round(6)  # as evaluate's predictions.csv
    out["ungradable"] = ~gradable
    out["reason"] = reasons
    return out


def check_output(output: str | Path) -> None:
    """Stop before any work when the output would replace a file (its folder is made)."""
    output = Path(output)
    if output.is_dir():
        raise DatasetError(f"{output}: a folder; name the CSV file to write, e.g. {output}/out.csv")
    if output.exists():
        raise DatasetError(f"{output}: already exists; predictions never replace a file")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="retfound-predict",
        description="Grade fundus photographs (DR grade 0-4) with a trained model; "
        "same preprocessing as the pipeline.",
    )
    parser.add_argument("model_dir", help="model folder: models/best_model or a merged export")
    parser.add_argument("input", help="folder of images, or CSV with a 'path' (and 'id') column")
    parser.add_argument("output", help="CSV to write: id, path, pred_grade, prob_0..prob_4")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size: {args.batch_size} is not allowed; must be >= 1")

    def run() -> None:
        check_output(args.output)
        table = list_images(args.input)
        model, config = load_model(args.model_dir)
        size = config["model"]["input_size"]
        log.info("grading %d images at %d px with %s", len(table), size, args.model_dir)
        result = grade_images(model, table, size, args.batch_size)
        write_text_atomic(args.output, result.to_csv(index=False))
        counts = result["pred_grade"].value_counts().sort_index().to_dict()
        log.info("wrote %s; images per predicted grade: %s", args.output, counts)
        for _, row in result[result["ungradable"]].iterrows():
            log.warning("%s: ungradable, no grade given (%s)", row["path"], row["reason"])

    run_stage(run)  # offline defaults, logging, and one line + exit code 2 for bad input


if __name__ == "__main__":
    main()
