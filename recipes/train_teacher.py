# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""Train the embedded digits teacher (`vit_digits_patch8_reg4`, a DINOv2-shaped timm ViT) from scratch, with
Accelerate, on the project's fixed digits training split, evaluated on its held-out split.

The same script runs in every setup Accelerate supports:
  - single CPU or single GPU:          python recipes/train_teacher.py --config recipes/configs/digits_teacher.yaml
  - CPU forced on a GPU machine:       accelerate launch --cpu recipes/train_teacher.py --config ...
  - multi-GPU / multi-node (DDP):      accelerate launch --multi_gpu --num_processes 2 recipes/train_teacher.py ...
  - mixed precision:                   ... --mixed-precision bf16   (or fp16)
Any other labelled data works too: `--dataset path/to/imagefolder` or a Hub dataset id. Any field of the config is a
flag. The training function reads top to bottom in raptor_zoo/recipes/train_teacher.py (args -> accelerator ->
data -> model -> optimiser -> prepare -> loop, checkpoints -> evaluation -> saved model). Outputs in --output-dir:
model.safetensors + config.json (timm layout), metrics.json, args.yaml, checkpoints/step_N; `--export-dir` writes
the fp16 form shipped in raptor_zoo/assets/digits-vit/.
"""
from raptor_zoo.recipes.train_teacher import TrainTeacherConfig, training_function
from raptor_zoo.training import parse_config

__all__ = ["TrainTeacherConfig", "training_function", "parse_config", "main"]


def main():
    training_function(parse_config(TrainTeacherConfig, description=__doc__))


if __name__ == "__main__":
    main()
