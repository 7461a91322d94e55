# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
r"""Fine-tune a Raptor (or any timm model) for image classification with Accelerate.

  accelerate launch --cpu recipes/finetune.py --model raptor-digits-k2 --dataset digits --epochs 1
  accelerate launch recipes/finetune.py --config recipes/configs/digits_finetune.yaml
  accelerate launch --multi_gpu --num_processes 8 recipes/finetune.py --model path/to/raptor --dataset org/dataset \
      --mixed-precision bf16 --layer-decay 0.65 --model-ema

Any field of the config is a flag (`--freeze-blocks 4`, `--train-head-only`, `--layer-decay 0.65`); `--data` and a
YAML key `data:` still name `--dataset`. The training function reads top to bottom in raptor_zoo/recipes/finetune.py
(args -> accelerator -> data -> model -> optimiser -> prepare -> loop, checkpoints -> saved model). Outputs in
--output-dir: args.yaml, checkpoints/step_N, metrics.json, and the model (a Raptor as a Hub folder that
raptor_zoo.from_pretrained loads; its EMA under ema/ with --model-ema).
"""
from raptor_zoo.recipes.finetune import FinetuneConfig, training_function
from raptor_zoo.training import parse_config

__all__ = ["FinetuneConfig", "training_function", "parse_config", "main"]


def main():
    training_function(parse_config(FinetuneConfig, description=__doc__))


if __name__ == "__main__":
    main()
