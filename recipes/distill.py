# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""Distil a teacher ViT into a Raptor by trajectory distillation, with Accelerate.

The same script runs in every setup Accelerate supports:
  - single CPU or single GPU:        accelerate launch recipes/distill.py --config recipes/configs/digits_k2.yaml
  - CPU forced on a GPU machine:     accelerate launch --cpu recipes/distill.py --config ...
  - multi-GPU (DDP):                 accelerate launch --multi_gpu --num_processes 8 recipes/distill.py --config ...
  - multi-process CPU (DDP, gloo):   accelerate launch --multi_gpu --num_processes 2 recipes/distill.py --cpu --config ...
  - mixed precision:                 ... --mixed-precision bf16   (or fp16)
Any field of the config is a flag (`--max-steps 100`, `--lr 1e-3`, `--dataset path/to/imagefolder`).

The training function reads top to bottom in raptor_zoo/recipes/distill.py (args -> accelerator -> teacher ->
data -> phases -> student -> stages: optimiser, prepare, loop, checkpoint -> evaluation -> save); it lives in
the package so that `raptor-zoo demo` runs the same loop from an installed wheel.
"""
from raptor_zoo.recipes.distill import DistillConfig, training_function
from raptor_zoo.training import parse_config

__all__ = ["DistillConfig", "training_function", "parse_config", "main"]


def main():
    training_function(parse_config(DistillConfig, description=__doc__))


if __name__ == "__main__":
    main()
