"""Cheaper fresh scoring: an int8 copy of the model, shorter inputs, and how well they agree with the full model.

Fresh selection pays one inference pass over ``k·b`` candidates per step; these options make that pass
cheaper at the price of a noisier ranking, which :func:`rank_agreement` measures against the full model.
Pure PyTorch.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.ao.quantization import default_dynamic_qconfig


@contextmanager
def _quiet_torch_ao():
    """torch.ao.quantization announces its move to torchao; it still works in this torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        yield


def quantized_scorer(model: nn.Module) -> nn.Module:
    """An eval-mode view of ``model`` whose ``nn.Linear`` layers are dynamically quantized to int8 (CPU only):
    weights stored in int8, activations quantized on the fly. Every other parameter and buffer (embeddings,
    norms, convolutions) is *shared* with ``model``, not copied, so only the int8 weights can go stale;
    ``model`` itself is left untouched (its modules, mode and values)."""
    shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    scorer = copy.deepcopy(model, memo=shared).eval()  # new modules around the same tensors
    with _quiet_torch_ao():
        return torch.ao.quantization.quantize_dynamic(scorer, {nn.Linear}, dtype=torch.qint8, inplace=True)


def refresh_quantized_scorer(scorer: nn.Module, model: nn.Module) -> nn.Module:
    """Bring a :func:`quantized_scorer` view up to ``model``'s current weights, in place, as a new one would be:
    each int8 layer re-quantizes its float twin's weight (per-tensor symmetric min/max, as ``quantize_dynamic``)
    and shares its bias, as a new view does; the rest is shared with ``model`` and already current. No copy and
    no module swap: cheap enough for every step."""
    live_modules = dict(model.named_modules())
    with torch.no_grad(), _quiet_torch_ao():
        for name, module in scorer.named_modules():
            if isinstance(module, DynamicInt8Linear):
                source = live_modules[name]
                observer = default_dynamic_qconfig.weight()
                observer(source.weight)
                scale, zero_point = observer.calculate_qparams()
                weight = torch.quantize_per_tensor(source.weight.float(), float(scale), int(zero_point), torch.qint8)
                module.set_weight_bias(weight, None if source.bias is None else source.bias.detach())  # shared
    return scorer


class Int8Scorer:
    """The int8 scoring copy of a model through training: built by :func:`quantized_scorer` on first use, then
    re-quantized in place by :func:`refresh_quantized_scorer` once ``refresh_steps`` optimizer steps have passed.
    ``weight`` is the classifier weight the copy was made with (a detached copy, as stale as the int8 layers)."""

    def __init__(self, refresh_steps: int = 1):
        if refresh_steps < 1:
            raise ValueError(f"refresh_steps must be >= 1; got {refresh_steps}.")
        self.refresh_steps = refresh_steps
        self.module: nn.Module | None = None
        self.weight: torch.Tensor | None = None
        self.built_at_step: int | None = None

    def update(self, model: nn.Module, weight: torch.Tensor, step: int) -> bool:
        """Bring the copy up to ``model`` when it is ``refresh_steps`` old (or missing); True when it did."""
        if self.module is not None and step - self.built_at_step < self.refresh_steps:
            return False
        self.module = quantized_scorer(model) if self.module is None else refresh_quantized_scorer(self.module, model)
        self.weight = weight.detach().clone()
        self.built_at_step = step
        return True


def rank_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors (ties broken by position): how alike a cheap
    scorer orders the candidates compared with the full model."""
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"rank_agreement needs two 1-D vectors of equal length; got {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.numel() < 2:
        return 1.0
    ranks = torch.stack([v.double().argsort().argsort().double() for v in (a, b)])
    ranks = ranks - ranks.mean(dim=1, keepdim=True)
    return float((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()))


def shorten_for_scoring(
    batch: dict[str, Any], max_length: int | None = None, image_scale: float | None = None,
    mask_key: str = "attention_mask", image_key: str = "pixel_values",
) -> dict[str, Any]:
    """Cheaper scoring inputs: text cut to ``max_length`` tokens per row, images resized by ``image_scale``.

    Text keeps the ``max_length`` columns on the side away from the padding (the first ones for right
    padding, the last ones for left padding), so every row keeps real tokens. Images are resized
    bilinearly with antialiasing; the model must accept the smaller size (global pooling does)."""
    mask = batch.get(mask_key)
    if max_length is not None and isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[1] > max_length:
        seq_len = mask.shape[1]
        left_padded = bool(mask[:, -1].all()) and not bool(mask[:, 0].all())
        columns = slice(seq_len - max_length, seq_len) if left_padded else slice(0, max_length)
        batch = {
            key: value[:, columns] if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[1] == seq_len else value
            for key, value in batch.items()
        }
    images = batch.get(image_key)
    if image_scale is not None and image_scale != 1 and isinstance(images, torch.Tensor) and images.ndim == 4:
        resized = F.interpolate(images, scale_factor=image_scale, mode="bilinear", antialias=True, align_corners=False)
        batch = {**batch, image_key: resized}
    return batch
