"""Active learning on a frozen encoder: sentence embeddings computed once, a linear probe trained per round.

``scripts/run_active_learning.py --frozen_encoder`` uses this. The embeddings are sentence-transformers' recipe for
all-MiniLM-L6-v2 (its ``modules.json``: Transformer → mean pooling → Normalize): the last hidden state averaged over
the real tokens (attention mask), then L2-normalised. They are cached on disk under a key of what produced them, and
a cache with another key is refused. :class:`LinearProbe` is the classifier trained on them (its ``classifier`` is the
``nn.Linear`` that :func:`mmr_transformers.heads.find_classifier` finds, and its input is the embedding, so margins
and ``mms_diverse``'s features are the embeddings). :class:`ProbeClassifier` shows the same probe to small-text's
query strategies (``predict_proba``, ``embed``), and :data:`SMALL_TEXT_ARMS` names those strategies.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def sentence_embeddings(model: nn.Module, tokenizer, texts: list[str], max_length: int,
                        batch_size: int = 128) -> torch.Tensor:
    """``(N, D)`` float32: the encoder's last hidden state mean-pooled over each text's real tokens, L2-normalised.
    Texts are batched by length (less padding); the rows come back in the order of ``texts``."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pooled = torch.empty(len(texts), model.config.hidden_size)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            inputs = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                               return_tensors="pt")
            hidden = model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled[rows] = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)).float()
    return nn.functional.normalize(pooled, dim=1)


def cache_key(model_path: str, texts: dict[str, list[str]], max_length: int) -> dict:
    """What the embeddings depend on: the encoder (its folder and a hash of its config, tokenizer and weight
    files), a hash of each split's texts in order, the truncation length and the pooling."""
    digest = hashlib.sha256()
    folder = os.path.realpath(model_path)
    for name in sorted(os.listdir(folder)):
        if name.endswith((".json", ".txt", ".model", ".safetensors", ".bin")):  # tokenizer: vocab, merges, spm
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + hashlib.sha256(f.read()).digest())
    return {"model": folder, "model_sha256": digest.hexdigest(), "max_length": max_length,
            "pooling": "mean over attention mask, L2-normalised",
            "texts_sha256": {split: hashlib.sha256(json.dumps(rows).encode()).hexdigest()
                             for split, rows in sorted(texts.items())}}


def cached_embeddings(path: str, key: dict, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The embeddings per split stored at ``path`` under ``key``; computed by ``compute()`` and stored when the
    file does not exist. A file stored under another key is refused (never silently reused or overwritten)."""
    if os.path.exists(path):
        stored = torch.load(path, weights_only=True)
        if stored["key"] != key:
            changed = sorted(name for name in key if stored["key"].get(name) != key[name])
            raise SystemExit(f"{path} holds embeddings of another encoder, data or length (differs in {changed}); "
                             "delete it or pass another --output_dir.")
        return stored["embeddings"]
    embeddings = compute()
    torch.save({"key": key, "embeddings": embeddings}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return embeddings


class LinearProbe(nn.Module):
    """``logits = classifier(features)``: one linear layer over fixed embeddings."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


class FeatureDataset(torch.utils.data.Dataset):
    """Rows ``{"features": x}`` of an ``(N, D)`` tensor: the probe's pool for ``select_for_labeling``."""

    def __init__(self, features: torch.Tensor):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index]}

    def select(self, indices: list[int]) -> FeatureDataset:
        return FeatureDataset(self.features[indices])


def train_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int, epochs: int,
                learning_rate: float, weight_decay: float) -> LinearProbe:
    """A fresh probe (initialised from ``seed``) trained full-batch with AdamW on the mean cross-entropy for
    ``epochs`` steps (one step per epoch)."""
    torch.manual_seed(seed)
    probe = LinearProbe(features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(probe(features), labels).backward()
        optimizer.step()
    return probe.eval()


def probe_accuracy(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((probe(features).argmax(dim=1) == labels).double().mean())


class ProbeClassifier:
    """The probe as small-text's query strategies call a classifier: ``predict_proba`` (the softmax of its logits)
    and ``embed`` (its input, the embeddings; with ``return_proba`` also the probabilities). small-text passes
    rows of its "dataset", which here is the ``(N, D)`` numpy array of embeddings."""

    def __init__(self, probe: LinearProbe):
        self.probe = probe

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.probe(torch.as_tensor(features)).softmax(dim=1).double().numpy()

    def embed(self, features: np.ndarray, return_proba: bool = False, pbar=None, **kwargs):
        features = np.asarray(features)
        return (features, self.predict_proba(features)) if return_proba else features


# small-text's query strategies run as arms of the loop: name -> (class name in small_text, constructor keywords)
SMALL_TEXT_ARMS = {
    "smalltext_breaking_ties": ("BreakingTies", {}),
    "smalltext_prediction_entropy": ("PredictionEntropy", {}),
    "smalltext_least_confidence": ("LeastConfidence", {}),
    "smalltext_embedding_kmeans": ("EmbeddingKMeans", {}),
    "smalltext_greedy_coreset": ("GreedyCoreset", {"distance_metric": "euclidean"}),
    "smalltext_contrastive": ("ContrastiveActiveLearning", {"pbar": None}),
}


def small_text_strategy(name: str):
    """A new instance of the small-text query strategy behind the arm ``name``."""
    try:
        import small_text
    except ImportError:
        raise SystemExit(f"--strategy {name} is small-text's strategy, and small-text is not installed: "
                         "pip install 'mmr-transformers[al-compare]' (or pip install small-text).") from None
    class_name, kwargs = SMALL_TEXT_ARMS[name]
    with warnings.catch_warnings():  # GreedyCoreset warns that its default metric changed in v1.2
        warnings.simplefilter("ignore")
        return getattr(small_text, class_name)(**kwargs)
