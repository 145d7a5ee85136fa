"""Rebuild the embedded demo backbone: models/demo_backbone/checkpoint.pth (~4 min on 2 CPU cores).

python scripts/pretrain_demo_backbone.py [--epochs 25] [--images 4000]
"""

import argparse
import json
import logging

from retfound_hpo.training.pretrain_demo import pretrain_demo_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="models/demo_backbone/checkpoint.pth")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--lesion-scale", type=float, default=2.0, help="as data.demo.lesion_scale")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stats = pretrain_demo_backbone(
        args.out,
        n_images=args.images,
        epochs=args.epochs,
        seed=args.seed,
        lesion_scale=args.lesion_scale,
    )
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
