#!/usr/bin/env python
"""Train a torchvision-style image classifier through MMRTrainer: the thesis' image experiments.

    python scripts/run_image.py --dataset cifar10 --download --model resnet44 --regime resnet44-cifar10-early \\
        --selection mms --selection_ratio 10
    python scripts/run_image.py --dataset imagefolder --data_dir ../shared/data/images/cifar10-jpg \\
        --model resnet20 --regime resnet44-cifar10-early --regime_scale 0.02 --use_cpu
    accelerate launch scripts/run_image.py --dataset imagefolder --data_dir /data/imagenet --image_size 224 \\
        --model mobilenet_v2 --regime mobilenet-imagenet

Settings are layered: ``MMRTrainingArguments`` defaults < the regime (learning rate, batch size, weight
decay, steps, no gradient clipping, MMR alpha recipe) < the command line. A regime also fixes the optimizer: SGD
with momentum and its step drops (see ``mmr_transformers/recipes/regimes.py``), so flags that would set another
schedule or optimizer are refused with it. Its batch is the global batch of an optimizer step: each of N processes
accumulating A micro-batches takes batch / (N·A) per micro-batch.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, set_seed

from mmr_transformers import MMRTrainer, MMRTrainingArguments
from mmr_transformers.recipes.callbacks import EvalTimeline
from mmr_transformers.recipes.runner import accuracy, check_sample_caps, parse_layered, train_and_evaluate
from mmr_transformers.recipes.image_data import DATASETS, load_image_datasets
from mmr_transformers.recipes.regimes import REGIMES, get_regime
from mmr_transformers.recipes.vision import build_model, fix_orthogonal_classifier


@dataclass
class ImageArguments:
    dataset: str = field(metadata={"help": "Image data set.", "choices": list(DATASETS)})
    data_dir: str | None = field(default=None, metadata={"help": "CIFAR root, or an ImageFolder tree with train/ and "
                                                                   "test/ (or val/) class folders."})
    download: bool = field(default=False, metadata={"help": "Download CIFAR with torchvision (needs a network)."})
    model: str = field(default="resnet44", metadata={"help": "resnet20/32/44/56/110, wrn28-10, vgg16-bn, or a "
                                                             "torchvision model name (e.g. mobilenet_v2)."})
    regime: str | None = field(default=None, metadata={"help": "Training regime of the thesis.",
                                                       "choices": sorted(REGIMES)})
    regime_scale: float = field(default=1.0, metadata={"help": "Multiply every step count of the regime (a short run); "
                                                                 "above 0, and only with --regime."})
    image_size: int = field(default=32, metadata={"help": "Input size: 32 for CIFAR, 224 for ImageNet."})
    cutout: int = field(default=0, metadata={"help": "Cutout square side in pixels (16 in the thesis' CIFAR runs); 0 = off."})
    autoaugment: bool = field(default=False, metadata={"help": "AutoAugment (CIFAR-10 policy at 32 px, ImageNet above)."})
    fixed_orthogonal_classifier: bool = field(
        default=False, metadata={"help": "Freeze the last layer to an orthonormal projection (thesis §3.2)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a seeded random subset."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a seeded random subset."})


# what a regime decides itself, so the command line may not set it
REGIME_SCHEDULE_FLAGS = ("--lr_scheduler_type", "--lr_scheduler_kwargs", "--warmup_steps", "--warmup_ratio", "--optim",
                         "--optim_args", "--adam_beta1", "--adam_beta2", "--adam_epsilon")


def launched_processes() -> int:
    """The processes of this run, as ``accelerate launch`` and ``torchrun`` tell each of them (``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def parse_args(argv: list[str] | None = None) -> tuple[ImageArguments, MMRTrainingArguments]:
    """Defaults < regime < command line. A regime's batch is the global batch of an optimizer step (shared by the
    processes and the accumulated micro-batches), and ``--mmr_alpha`` without ``--mmr_alpha_end`` replaces its alpha
    ramp with that constant (0: MMR off)."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--regime")
    pre.add_argument("--regime_scale", "--regime-scale", type=float)
    pre.add_argument("--gradient_accumulation_steps", "--gradient-accumulation-steps", type=int, default=1)
    pre.add_argument("--per_device_train_batch_size", "--per-device-train-batch-size", type=int)
    for flag in ("--mmr_alpha", "--mmr_alpha_end", *REGIME_SCHEDULE_FLAGS):
        pre.add_argument(flag, flag.replace("_", "-"))  # HfArgumentParser takes both spellings
    known, _ = pre.parse_known_args(argv)
    layers = [("defaults", {"output_dir": os.path.join("runs", "image"), "remove_unused_columns": False})]
    if known.regime_scale is not None and not known.regime:
        raise SystemExit(f"--regime_scale {known.regime_scale} without --regime: it scales a regime's steps, so it "
                         "would be ignored. Add --regime, or set --max_steps yourself.")
    if known.regime:
        try:
            regime = get_regime(known.regime, 1.0 if known.regime_scale is None else known.regime_scale)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        given = [flag for flag in REGIME_SCHEDULE_FLAGS if getattr(known, flag[2:]) is not None]
        if given:
            raise SystemExit(f"{', '.join(given)}: a regime brings its own optimizer and learning-rate drops "
                             f"({regime.name}: SGD, ×{regime.factor:g} at steps {list(regime.milestones)}), so these "
                             "would be ignored. Drop them, or drop --regime and set the schedule yourself.")
        settings = {"learning_rate": regime.learning_rate, "weight_decay": regime.weight_decay,
                    "max_grad_norm": regime.max_grad_norm, "max_steps": regime.total_steps}
        shares = launched_processes() * known.gradient_accumulation_steps  # micro-batches of one optimizer step
        if known.per_device_train_batch_size is None:  # given, it wins (the regime's epochs then differ)
            if regime.batch_size % shares:
                raise SystemExit(f"regime {regime.name} counts its steps in batches of {regime.batch_size}, which "
                                 f"{launched_processes()} process(es) × {known.gradient_accumulation_steps} accumulated "
                                 f"micro-batches cannot share evenly; make their product a divisor of "
                                 f"{regime.batch_size}, or set --per_device_train_batch_size yourself (the epochs then "
                                 "differ).")
            settings["per_device_train_batch_size"] = regime.batch_size // shares
        if known.mmr_alpha is None or known.mmr_alpha_end is not None:  # a lone --mmr_alpha replaces the ramp
            settings |= {"mmr_alpha": regime.mmr_alpha, "mmr_alpha_end": regime.mmr_alpha_end,
                         "mmr_alpha_schedule": "linear" if regime.mmr_alpha_end else "constant"}
        layers.append((f"regime {regime.name}", settings))
    # no abbreviations: the pre-parser above must see every flag the real parser takes (--warmup_st would pass it)
    return parse_layered(HfArgumentParser((ImageArguments, MMRTrainingArguments), allow_abbrev=False), layers, argv)


def main(argv: list[str] | None = None) -> dict:
    image_args, training_args = parse_args(argv)
    check_sample_caps(image_args)
    set_seed(training_args.seed)
    train, evaluation, num_classes = load_image_datasets(
        image_args.dataset, image_args.data_dir, image_args.download, image_args.image_size,
        cutout=image_args.cutout, autoaugment=image_args.autoaugment,
        max_train_samples=image_args.max_train_samples, max_eval_samples=image_args.max_eval_samples,
    )
    model = build_model(image_args.model, num_classes)
    if image_args.fixed_orthogonal_classifier:
        fix_orthogonal_classifier(model, training_args.classifier_module, seed=training_args.seed)
    optimizers = (None, None)
    if image_args.regime:
        regime = get_regime(image_args.regime, image_args.regime_scale)
        optimizers = regime.optimizer_and_scheduler(model, training_args.learning_rate, training_args.weight_decay)
    trainer = MMRTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                         compute_metrics=accuracy, optimizers=optimizers, callbacks=[EvalTimeline()])
    return train_and_evaluate(trainer, {"eval": evaluation}, {"image": image_args, "num_classes": num_classes})


if __name__ == "__main__":
    main()
