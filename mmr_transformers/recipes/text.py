"""What the text scripts (``run_glue.py``, ``run_classification.py``) share: the model and tokenization
arguments, loading a sequence classifier (with the offline advice on failure), seeded subsets and tokenizing."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

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
    hidden_dropout_prob: float | None = field(default=None, metadata={"help": "Override the model's dropout."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose classifier has another number of labels (re-initialised)."}
    )


def subset(dataset: datasets.Dataset, size: int | None) -> datasets.Dataset:
    """A seeded random subset of ``size`` rows (the same for every run), or the whole set."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=SUBSET_SEED).select(range(size))


def load_sequence_classifier(args: TextModelArguments, offline_hint: str, **config_kwargs):
    """Tokenizer and ``AutoModelForSequenceClassification`` of ``--model_name_or_path`` (``config_kwargs`` such as
    ``num_labels`` go to its config); a failure to fetch them says how to run offline (``offline_hint`` names the
    script's local-data flags)."""
    name = args.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(name, cache_dir=args.cache_dir, **config_kwargs)
        if args.hidden_dropout_prob is not None:
            config.hidden_dropout_prob = args.hidden_dropout_prob
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
    return tokenizer, model


def tokenize_splits(raw: datasets.DatasetDict, tokenizer, text_columns: list[str], args: TextModelArguments,
                    keep: tuple[str, ...] = ("label",)) -> datasets.DatasetDict:
    """Every split tokenized (one text or a pair, truncated to ``max_seq_length``), its other columns but ``keep``
    removed."""

    def tokenize(batch):
        return tokenizer(*[batch[column] for column in text_columns], truncation=True, max_length=args.max_seq_length,
                         padding="max_length" if args.pad_to_max_length else False)

    removed = [column for column in next(iter(raw.values())).column_names if column not in keep]
    return raw.map(tokenize, batched=True, remove_columns=removed)
