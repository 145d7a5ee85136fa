"""Models: ViT backbones, RETFound checkpoint loading, LoRA adapters, saved and merged models."""
