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

from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.training.hparams import resolve_hparams, train_with_hparams
from retfound_hpo.training.inputs import load_cached
from retfound_hpo.training.pretrain_demo import MaskedAutoencoder


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
        params.model,
        params.train,
    )
    results = {"hparams": hparams, "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(params.seed)
        random_ckpt = Path(tmp) / "random.pth"  # same shape and layout, no pretraining
        torch.save({"model": MaskedAutoencoder(params.model).retfound_state_dict()}, random_ckpt)
        for name, ckpt in (("pretrained", params.model.checkpoint), ("random_init", random_ckpt)):
            _, result = train_with_hparams(
                hparams,
                dataclasses.replace(params.model, checkpoint=str(ckpt)),
                params.train,
                seed=params.seed,
                metric=params.hpo.metric,
                epochs=args.epochs,
                patience=args.epochs,
                train=train,
                val=val,
            )
            best = result.best_metrics
            results[name] = {k: round(best[k], 4) for k in ("accuracy", "kappa", "auroc", "f1")}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
