# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""Linear probe of a frozen backbone (a Raptor or any teacher ViT) with Accelerate: the paper's DINOv2 protocol.

  accelerate launch --cpu recipes/linear_probe.py --compare --backbone raptor-digits-k2
  accelerate launch recipes/linear_probe.py --config recipes/configs/digits_probe.yaml --backbone path/to/raptor
  accelerate launch recipes/linear_probe.py --backbone vit_small_patch14_dinov2.lvd142m --dataset path/to/imagefolder

`--compare` probes the Raptor and its teacher on the same split at one image size and reports the recovery ratio
Raptor / teacher. Any field of the config is a flag. The probe reads top to bottom in
raptor_zoo/recipes/linear_probe.py (args -> accelerator -> data -> backbones -> features -> linear head -> results).
Output: --output-dir/linear_probe.json (and args.yaml).
"""
from raptor_zoo.recipes.linear_probe import ProbeConfig, linear_probe_function
from raptor_zoo.training import parse_config

__all__ = ["ProbeConfig", "linear_probe_function", "parse_config", "main"]


def main():
    linear_probe_function(parse_config(ProbeConfig, description=__doc__))


if __name__ == "__main__":
    main()
