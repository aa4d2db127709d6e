"""Find a classifier's last linear layer and capture its input ``phi`` with a forward hook.

Works for Hugging Face sequence classifiers (BERT, RoBERTa's ``classifier.out_proj``, DistilBERT,
ALBERT, ELECTRA, DeBERTa-v2, ModernBERT, GPT-2-style ``score`` heads that score every token and pool
one) and torchvision classifiers (ResNet ``fc``, VGG/MobileNet ``classifier[-1]``). The rule: the last
registered ``nn.Linear`` whose ``out_features`` equals ``num_labels`` (or, when the model does not say
how many labels it has, the last ``nn.Linear``). Name the module to override the rule.

A LoRA-adapted linear layer (PEFT's ``lora.Linear``: ``base_layer`` plus ``lora_A``/``lora_B``) counts as one
linear layer whose weight is the effective ``W0 + scaling · B·A`` of its active adapters; its own LoRA parts
are not candidates. Found by their attributes, so nothing here imports ``peft``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .margins import _at_least_fp32


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP, DataParallel
        model = model.module
    return model


def _is_lora_linear(module: nn.Module) -> bool:
    """A PEFT LoRA wrapper around an ``nn.Linear`` (its output: base output plus the scaled low-rank update)."""
    return isinstance(getattr(module, "base_layer", None), nn.Linear) and isinstance(
        getattr(module, "lora_A", None), nn.ModuleDict) and isinstance(getattr(module, "lora_B", None), nn.ModuleDict)


def _linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every linear layer in registration order: ``nn.Linear`` modules and LoRA wrappers (whose parts are skipped)."""
    layers, inside_lora = [], ()
    for name, module in model.named_modules():
        if inside_lora and name.startswith(inside_lora):
            continue
        if _is_lora_linear(module):
            layers.append((name, module))
            inside_lora = tuple(f"{name}.{part}" for part in ("base_layer", "lora_A", "lora_B"))
        elif isinstance(module, nn.Linear):
            layers.append((name, module))
    return layers


def _out_features(module: nn.Module) -> int:
    return (module.base_layer if _is_lora_linear(module) else module).out_features


@dataclass
class FeatureCapture:
    """What the classifier saw (``inputs``), produced (``outputs``) and applied (``weight``, ``bias``) in the last
    forward.

    ``weight`` is a copy of ``W`` taken inside the forward, where a sharded model (FSDP, DeepSpeed ZeRO-3) holds
    its full, unsharded value; the copy is differentiable, so a loss built on it sends its gradient to the
    parameter through the same backward as the forward's own."""

    module_name: str
    inputs: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def precise_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` recomputed as ``W·phi + b`` in fp32 when the layer produced them in bf16 or fp16 (autocast, or
        a model in that dtype), whose rounding ties nearby margins (bf16 rounds |s| ≈ 10 to steps of 1/16); logits
        in fp32 or wider are returned as they are. Of a LoRA head in training mode, the layer as evaluation applies
        it: without the adapter's dropout on ``phi``."""
        if logits.dtype in (torch.float32, torch.float64):
            return logits
        phi = _at_least_fp32(self.features_for(logits))
        with torch.autocast(phi.device.type, enabled=False):
            return F.linear(phi, _at_least_fp32(self.weight), None if self.bias is None else _at_least_fp32(self.bias))

    def features_for(self, logits: torch.Tensor) -> torch.Tensor:
        """``phi`` per row of ``logits``: the captured input, or for a head that scores every token
        (GPT-2's ``score``), the input at the token whose scores became the sample's logits."""
        if self.inputs is None:
            raise RuntimeError(
                f"the classifier {self.module_name!r} did not run in this forward pass, so its input could "
                "not be captured; pass classifier_module naming the layer that produces the logits."
            )
        outputs = self.outputs.to(logits.dtype)
        if outputs.shape == logits.shape:
            if outputs is logits or torch.equal(outputs, logits):
                return self.inputs
        elif outputs.ndim == 3 and outputs.shape[0] == logits.shape[0] and outputs.shape[2] == logits.shape[1]:
            matches = (outputs == logits[:, None, :]).all(dim=2)
            if matches.any(dim=1).all():
                position = matches.int().argmax(dim=1)
                return self.inputs[torch.arange(logits.shape[0], device=logits.device), position]
        same_shape = tuple(self.outputs.shape) == tuple(logits.shape)
        raise ValueError(
            f"the output of {self.module_name!r} (shape {tuple(self.outputs.shape)}) is not the model's logits "
            f"(shape {tuple(logits.shape)})"
            + (": same shape, other values, so the model transforms it after this layer (e.g. a LayerNorm, a "
               "temperature or a scale)" if same_shape else "")
            + ". Margins need logits that a linear layer s = W·phi + b returns unchanged; a head that transforms "
            "them afterwards is not supported by MMR or margin-based selection. If another nn.Linear produces the "
            "logits unchanged, pass classifier_module naming it; otherwise train with mmr_alpha=0 and selection='none'."
        )


@dataclass
class ClassifierHead:
    """The last linear layer ``s = W·phi + b`` of a classifier: an ``nn.Linear`` or a LoRA-adapted one."""

    name: str
    module: nn.Module

    @property
    def linear(self) -> nn.Linear:
        """The ``nn.Linear`` holding the (base) weight and the bias."""
        return self.module.base_layer if _is_lora_linear(self.module) else self.module

    @property
    def weight(self) -> torch.Tensor:
        """``W`` as the layer applies it (differentiable): for LoRA, ``W0 + sum_a scaling_a · B_a·A_a`` over the
        active adapters, unless they are merged into ``W0`` already or disabled."""
        if not _is_lora_linear(self.module):
            return self.module.weight
        lora = self.module
        weight = lora.base_layer.weight
        if getattr(lora, "merged", False) or getattr(lora, "disable_adapters", False):
            return weight
        for adapter in lora.active_adapters:
            if adapter not in lora.lora_A:
                continue
            if getattr(lora, "use_dora", {}).get(adapter, False):
                raise ValueError(
                    f"the classifier {self.name!r} is adapted with DoRA (adapter {adapter!r}), whose weight is "
                    "rescaled per output row; margins need the plain LoRA update W0 + scaling·B·A. Leave the "
                    "classifier out of DoRA's target_modules (train it fully with modules_to_save), or use LoRA."
                )
            delta = lora.lora_B[adapter].weight @ lora.lora_A[adapter].weight
            weight = weight + lora.scaling[adapter] * delta
        return weight

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    @contextmanager
    def capture(self) -> Iterator[FeatureCapture]:
        """Record the layer's input, output and weight for the forward passes run inside the block."""
        record = FeatureCapture(self.name)

        def hook(module, args, output):
            record.inputs, record.outputs, record.weight = args[0], output, self.weight.clone()
            record.bias = None if self.linear.bias is None else self.linear.bias.clone()

        # prepend: run before a sharding wrapper's own post-forward hook frees the full weight (FSDP2, ZeRO-3)
        handle = self.module.register_forward_hook(hook, prepend=True)
        try:
            yield record
        finally:
            handle.remove()


def find_classifier(model: nn.Module, module_name: str | None = None) -> ClassifierHead:
    """Locate the last linear layer of ``model``; ``module_name`` (e.g. ``"classifier.out_proj"``) overrides."""
    model = _unwrap(model)
    if module_name:
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        parent_name = module_name.rpartition(".")[0]
        if module_name.endswith(".base_layer") and _is_lora_linear(model.get_submodule(parent_name)):
            module_name, module = parent_name, model.get_submodule(parent_name)  # the LoRA layer around it
        if not (isinstance(module, nn.Linear) or (module is not None and _is_lora_linear(module))):
            found = "no such module" if module is None else f"a {type(module).__name__}, not an nn.Linear"
            raise ValueError(
                f"classifier_module={module_name!r} is {found} in {type(model).__name__}. Linear layers "
                f"of this model: {[name for name, _ in _linear_layers(model)][-8:]} (last 8)."
            )
        return ClassifierHead(module_name, module)

    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    linears = _linear_layers(model)
    candidates = [(n, m) for n, m in linears if num_labels is None or _out_features(m) == num_labels]
    if not candidates:
        raise ValueError(
            f"could not find the classifier of {type(model).__name__}: no nn.Linear layer with out_features == "
            f"num_labels ({num_labels}). Linear layers found: {[(n, _out_features(m)) for n, m in linears][-8:]} "
            "(last 8). Pass classifier_module='<name>' naming the last linear layer, the one producing the logits."
        )
    return ClassifierHead(*candidates[-1])


def check_classification_head(model: nn.Module, head: ClassifierHead, method: str) -> None:
    """Refuse heads that margins make no sense for: regression (one output) or multi-label."""
    config = getattr(_unwrap(model), "config", None)
    problem_type = getattr(config, "problem_type", None)
    if head.num_classes < 2 or problem_type == "regression":
        raise ValueError(
            f"{method} needs a single-label classification head with at least 2 classes, but "
            f"{head.name!r} has {head.num_classes} output(s) (problem_type={problem_type!r}): this is a regression "
            "head. Train regression tasks (e.g. STS-B) with mmr_alpha=0 and selection='none', or with a plain Trainer."
        )
    if problem_type == "multi_label_classification":
        raise ValueError(
            f"{method} is defined for single-label classification (one correct class per sample), but the model "
            "has problem_type='multi_label_classification'. Use mmr_alpha=0 and selection='none' for multi-label tasks."
        )
