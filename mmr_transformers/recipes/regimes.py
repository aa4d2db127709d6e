"""The training regimes of the thesis' image experiments (thesis §6, the authors' public code), by name.

Every number of a regime is here and nowhere else: SGD with momentum, weight decay, batch size, the
learning rate and the optimizer steps at which it drops, the number of steps, gradient clipping (none) and the MMR
alpha recipe.
A CIFAR epoch of batch 64 is 781 steps (50,000 // 64), so epochs 32/35/38 are steps 24992/27335/29678.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

CIFAR_STEPS_PER_EPOCH = 50_000 // 64
IMAGENET_STEPS_PER_EPOCH = 1_281_167 // 256


@dataclass(frozen=True)
class Regime:
    name: str
    learning_rate: float
    milestones: tuple[int, ...]  # optimizer steps at which the rate is multiplied by ``factor``
    factor: float
    total_steps: int
    batch_size: int
    weight_decay: float
    momentum: float = 0.9
    max_grad_norm: float = 0.0  # no clipping: the regimes name none (Trainer's default would clip at 1.0)
    decay_conv_weights_only: bool = False
    mmr_alpha: float = 1e-5
    mmr_alpha_end: float | None = None  # a linear ramp from mmr_alpha when set

    def lr_at(self, step: int) -> float:
        """The learning rate at optimizer step ``step`` (0-based)."""
        return self.learning_rate * self.factor ** sum(step >= m for m in self.milestones)

    def scaled(self, scale: float) -> Regime:
        """The same regime with every step count multiplied by ``scale`` (to shorten it for a small run)."""
        if not scale > 0:
            raise ValueError(f"regime_scale {scale}: a regime's steps are multiplied by it, so it must be above 0 "
                             "(e.g. 0.2 for a fifth of the regime).")
        if scale == 1:
            return self
        return replace(self, name=f"{self.name}@{scale:g}", milestones=tuple(max(1, round(m * scale)) for m in self.milestones),
                       total_steps=max(1, round(self.total_steps * scale)))

    def optimizer_and_scheduler(self, model: nn.Module, learning_rate: float | None = None, weight_decay: float | None = None):
        """SGD with momentum and this regime's step drops (``learning_rate``/``weight_decay`` override the regime's)."""
        lr = self.learning_rate if learning_rate is None else learning_rate
        decay = self.weight_decay if weight_decay is None else weight_decay
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self.decay_conv_weights_only:
            decayed = [p for n, p in trainable if p.ndim == 4]
            groups = [{"params": decayed, "weight_decay": decay},
                      {"params": [p for n, p in trainable if p.ndim != 4], "weight_decay": 0.0}]
        else:
            groups = [{"params": [p for _, p in trainable], "weight_decay": decay}]
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=self.momentum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_at(step) / self.learning_rate)
        return optimizer, scheduler


def _epochs(*epochs: int, per_epoch: int = CIFAR_STEPS_PER_EPOCH) -> tuple[int, ...]:
    return tuple(e * per_epoch for e in epochs)


REGIMES = {
    # He et al.: drops at epochs 81/122/164 of 200 (156K steps)
    "resnet44-cifar10-standard": Regime(
        "resnet44-cifar10-standard", 0.1, _epochs(81, 122, 164), 0.1, 200 * CIFAR_STEPS_PER_EPOCH, 64, 1e-4,
        mmr_alpha=1e-5, mmr_alpha_end=1e-3),
    # thesis §6.1.1: drops at epochs 32/35/38; 93% at 44K steps
    "resnet44-cifar10-early": Regime(
        "resnet44-cifar10-early", 0.1, (24992, 27335, 29678), 0.1, 44_000, 64, 1e-4,
        mmr_alpha=1e-5, mmr_alpha_end=1e-3),
    # drops ×0.2 at epochs 60/120/160 of 200
    "wrn28-10-cifar100-standard": Regime(
        "wrn28-10-cifar100-standard", 0.1, _epochs(60, 120, 160), 0.2, 200 * CIFAR_STEPS_PER_EPOCH, 64, 5e-4,
        mmr_alpha=1e-5, mmr_alpha_end=1e-3),
    # thesis §6.1.1: drops at epochs 50/53/56; 82.2% at 80K steps
    "wrn28-10-cifar100-early": Regime(
        "wrn28-10-cifar100-early", 0.1, (39050, 41393, 43736), 0.2, 80_000, 64, 5e-4,
        mmr_alpha=1e-5, mmr_alpha_end=1e-3),
    # ÷10 at epochs 30/60/80 of 90, weight decay on conv weights only, alpha 1e-5 constant
    "mobilenet-imagenet": Regime(
        "mobilenet-imagenet", 0.1, _epochs(30, 60, 80, per_epoch=IMAGENET_STEPS_PER_EPOCH), 0.1,
        90 * IMAGENET_STEPS_PER_EPOCH, 256, 4e-5, decay_conv_weights_only=True, mmr_alpha=1e-5),
}


def get_regime(name: str, scale: float = 1.0) -> Regime:
    try:
        return REGIMES[name].scaled(scale)
    except KeyError:
        raise ValueError(f"Unknown regime {name!r}; choose one of {sorted(REGIMES)}.") from None
