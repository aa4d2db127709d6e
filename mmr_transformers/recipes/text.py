"""What the text scripts (``run_glue.py``, ``run_classification.py``) share: the model and tokenization
arguments, loading a sequence classifier (with the offline advice on failure), seeded subsets and tokenizing."""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field

import datasets
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from mmr_transformers.heads import find_classifier

logger = logging.getLogger(__name__)

SUBSET_SEED = 42  # --max_*_samples draw the same subset for every run, whatever its --seed


@dataclass(kw_only=True)
class TextModelArguments:
    """The encoder and how texts reach it (keyword-only, so a script's own required fields may come first)."""

    model_name_or_path: str = field(default="bert-base-uncased", metadata={"help": "Hub id or local path."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per input after truncation."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every input to max_seq_length instead of to the longest in a batch."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a random subset of this size, at least 1 (the same subset for every seed)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a random subset of this size, at least 1."}
    )
    hidden_dropout_prob: float | None = field(default=None, metadata={
        "help": "Override the model's hidden dropout (BERT's hidden_dropout_prob, DistilBERT's dropout, GPT-2's "
                "resid_pdrop and embd_pdrop); only 0 for a model without one."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose classifier has another number of labels (re-initialised)."}
    )


def subset(dataset: datasets.Dataset, size: int | None) -> datasets.Dataset:
    """A seeded random subset of ``size`` rows (the same for every run), or the whole set."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=SUBSET_SEED).select(range(size))


# BERT's hidden_dropout_prob (embeddings and every sublayer's output) under each family's own name
HIDDEN_DROPOUT_FIELDS = (("hidden_dropout_prob",), ("dropout",), ("resid_pdrop", "embd_pdrop"))  # BERT-like, DistilBERT, GPT-2


def set_hidden_dropout(config, probability: float) -> None:
    """``--hidden_dropout_prob`` on the config's own field for it. A model without one (Llama and Qwen2 have no
    hidden dropout; ModernBERT splits it into other fields) takes only 0, and only while its own dropouts are all 0:
    another value would be recorded as applied and never used."""
    for fields in HIDDEN_DROPOUT_FIELDS:
        if all(hasattr(config, name) for name in fields):
            for name in fields:
                setattr(config, name, probability)
            return
    others = {k: v for k, v in config.to_dict().items() if ("dropout" in k or "pdrop" in k) and isinstance(v, float)}
    if probability != 0 or any(others.values()):
        raise SystemExit(f"--hidden_dropout_prob {probability}: a {type(config).__name__} has no field for BERT's hidden "
                         f"dropout (its dropout settings: {others}), so the value would not be what the model uses. "
                         "Leave the flag out (the model's own dropout applies), or set its own fields in its config.")


def load_sequence_classifier(args: TextModelArguments, offline_hint: str, label_names: list[str] | None = None,
                             **config_kwargs):
    """Tokenizer and ``AutoModelForSequenceClassification`` of ``--model_name_or_path`` (``config_kwargs`` such as
    ``finetuning_task`` go to its config); a failure to fetch them says how to run offline (``offline_hint`` names the
    script's local-data flags). ``label_names`` (class i's name at i) become the config's labels, and a checkpoint's
    classifier trained on the same classes in another order is reordered to them (:func:`align_classifier_rows`)."""
    name = args.model_name_or_path
    if label_names is not None:
        config_kwargs |= {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                          "label2id": {label: i for i, label in enumerate(label_names)}}
    try:
        checkpoint_labels = AutoConfig.from_pretrained(name, cache_dir=args.cache_dir).id2label
        config = AutoConfig.from_pretrained(name, cache_dir=args.cache_dir, **config_kwargs)
        if args.hidden_dropout_prob is not None:
            set_hidden_dropout(config, args.hidden_dropout_prob)
        tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=args.cache_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            name, config=config, cache_dir=args.cache_dir, ignore_mismatched_sizes=args.ignore_mismatched_sizes,
        )
    except OSError as error:  # not on the Hub or not reachable, not in the cache, or a folder missing files
        raise SystemExit(
            f"Could not load the model {name!r} (--model_name_or_path): {error}\n"
            f"Pass a local --model_name_or_path: a folder with config.json, the weights and the tokenizer files "
            f"(as save_pretrained writes them). Without a network, also set HF_HUB_OFFLINE=1 and {offline_hint}."
        ) from None
    check_max_length(args.max_seq_length, tokenizer, config, positions_before_first_token(model))
    if label_names is not None and len(checkpoint_labels) == len(label_names):  # a head of that size is loaded as is
        align_classifier_rows(model, [checkpoint_labels[i] for i in range(len(label_names))], label_names)
    return tokenizer, model


def positions_before_first_token(model) -> int:
    """Rows of the position table that no token can use: RoBERTa-like embeddings (fairseq's
    ``create_position_ids_from_input_ids``: RoBERTa, XLM-R, CamemBERT, MPNet, ESM, ...) number the tokens from
    ``padding_idx + 1``, so RoBERTa's 514 rows hold 512 tokens; BERT-like ones from 0."""
    embeddings = getattr(model.base_model, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    numbering = sys.modules.get(type(embeddings).__module__)
    numbers_after_padding = hasattr(embeddings, "create_position_ids_from_input_ids") or hasattr(
        numbering, "create_position_ids_from_input_ids")
    return padding_idx + 1 if numbers_after_padding and isinstance(padding_idx, int) else 0


def check_max_length(max_seq_length: int, tokenizer, config, reserved_positions: int = 0) -> None:
    """Inputs of ``max_seq_length`` tokens must fit the model's table of absolute positions (less its
    ``reserved_positions``, :func:`positions_before_first_token`) and its tokenizer's stated maximum: a longer batch
    would stop training with an index or shape error, and only when a long text came up."""
    limits = {"its tokenizer's model_max_length": tokenizer.model_max_length}
    if getattr(config, "position_biased_input", True):  # DeBERTa-v3's relative positions have no table to overflow
        table = getattr(config, "max_position_embeddings", None)
        if reserved_positions and isinstance(table, int) and table > 0:
            limits[f"its config's max_position_embeddings {table} less the {reserved_positions} positions its "
                   "embeddings number before the first token, that is"] = table - reserved_positions
        else:
            limits["its config's max_position_embeddings"] = table
    # unset: a huge int (a tokenizer without a stated maximum) or -1 (XLNet)
    limits = {what: n for what, n in limits.items() if isinstance(n, int) and 0 < n < 1_000_000}
    if limits and max_seq_length > min(limits.values()):
        raise SystemExit(f"--max_seq_length {max_seq_length}: the model takes at most {min(limits.values())} tokens "
                         f"({', '.join(f'{what} {n}' for what, n in limits.items())}). Lower --max_seq_length.")


def align_classifier_rows(model, checkpoint_names: list[str], names: list[str]) -> None:
    """Row i of the classifier predicts ``names[i]``: a checkpoint trained on the same classes in another order
    (e.g. ``roberta-large-mnli``: contradiction first) has its output rows permuted to it, so that its predictions
    keep their meaning; a checkpoint with other named classes is fine-tuned to ``names`` with a warning."""
    if all(re.fullmatch(r"LABEL_\d+", str(n)) for n in checkpoint_names):  # an unnamed (new or generic) head
        return
    lowered = [str(n).lower() for n in checkpoint_names]
    if lowered == [str(n).lower() for n in names]:
        return
    if sorted(lowered) != sorted(str(n).lower() for n in names):
        logger.warning("the checkpoint's classifier was trained for the classes %s; its rows now learn %s, in that "
                       "order", checkpoint_names, names)
        return
    order = [lowered.index(str(n).lower()) for n in names]
    linear = find_classifier(model).linear
    with torch.no_grad():
        linear.weight.copy_(linear.weight[order])
        if linear.bias is not None:
            linear.bias.copy_(linear.bias[order])
    logger.info("the checkpoint's classifier orders its classes %s; its rows are reordered to %s", checkpoint_names,
                names)


def tokenize_splits(raw: datasets.DatasetDict, tokenizer, text_columns: list[str], args: TextModelArguments,
                    keep: tuple[str, ...] = ("label",)) -> datasets.DatasetDict:
    """Every split tokenized (one text or a pair, truncated to ``max_seq_length``), its other columns but ``keep``
    removed (each split's own: the files may have other extra columns)."""

    def tokenize(batch):
        return tokenizer(*[batch[column] for column in text_columns], truncation=True, max_length=args.max_seq_length,
                         padding="max_length" if args.pad_to_max_length else False)

    return datasets.DatasetDict({
        split: dataset.map(tokenize, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep])
        for split, dataset in raw.items()})
