"""Does the demo backbone's pretraining matter? LoRA on it vs. LoRA on a random backbone.

Run after `dvc repro` (it reads data/prepared): python bench/pretrained_vs_random.py
Prints JSON: best validation accuracy / kappa / AUROC for both, same hyperparameters and seed.
"""

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import torch

from retfound_hpo.config import load_params
from retfound_hpo.pretrain import MaskedAutoencoder
from retfound_hpo.search import resolve_hparams, train_config
from retfound_hpo.train import load_cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params("params.yaml")
    prepared = Path(params.data.prepared_dir)
    train, val = load_cached(prepared / "train"), load_cached(prepared / "val")
    hparams = resolve_hparams(
        {"lora_r": 8, "lora_alpha": 16, "learning_rate": args.lr, "batch_size": 16, "dropout": 0.2},
        params,
    )
    results = {"hparams": hparams, "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(params.seed)
        random_ckpt = Path(tmp) / "random.pth"  # same shape and layout, no pretraining
        torch.save({"model": MaskedAutoencoder(params.model).retfound_state_dict()}, random_ckpt)
        for name, ckpt in (("pretrained", params.model.checkpoint), ("random_init", random_ckpt)):
            run = dataclasses.replace(
                params, model=dataclasses.replace(params.model, checkpoint=str(ckpt))
            )
            _, result = train_config(hparams, run, args.epochs, args.epochs, train, val)
            best = result.best_metrics
            results[name] = {k: round(best[k], 4) for k in ("accuracy", "kappa", "auroc", "f1")}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
