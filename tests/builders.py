"""What the tests build: tiny random models and data sets in memory (never the network), training
arguments, a recording trainer, and real subprocess launches (``python``, ``accelerate launch``)."""

from __future__ import annotations

import copy
import importlib.util
import os
import socket
import subprocess
import sys

import datasets
import torch
import transformers

from mmr_transformers import MMRTrainer, MMRTrainingArguments

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VOCAB = 64
SEQ_LEN = 8

_COMMON = dict(vocab_size=VOCAB, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)

# (config class, model class, extra config kwargs, expected classifier name)
ARCHITECTURES = {
    "bert": ("BertConfig", "BertForSequenceClassification", dict(num_hidden_layers=2), "classifier"),
    "roberta": (
        "RobertaConfig", "RobertaForSequenceClassification", dict(num_hidden_layers=2, pad_token_id=1), "classifier.out_proj"
    ),
    "distilbert": (
        "DistilBertConfig", "DistilBertForSequenceClassification",
        dict(dim=16, n_layers=2, n_heads=2, hidden_dim=32, dropout=0.1, attention_dropout=0.1), "classifier",
    ),
    "albert": ("AlbertConfig", "AlbertForSequenceClassification", dict(num_hidden_layers=2, embedding_size=8), "classifier"),
    "electra": (
        "ElectraConfig", "ElectraForSequenceClassification", dict(num_hidden_layers=2, embedding_size=16), "classifier.out_proj"
    ),
    "deberta-v2": (
        "DebertaV2Config", "DebertaV2ForSequenceClassification", dict(num_hidden_layers=2, pooler_hidden_size=16), "classifier"
    ),
    "modernbert": (
        "ModernBertConfig", "ModernBertForSequenceClassification",
        dict(num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
             global_attn_every_n_layers=1, local_attention=16),
        "classifier",
    ),
    "gpt2": ("GPT2Config", "GPT2ForSequenceClassification", dict(n_embd=16, n_layer=2, n_head=2, n_positions=64, pad_token_id=0), "score"),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification", dict(num_hidden_layers=2, num_key_value_heads=1, pad_token_id=0), "score"),
    "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification", dict(num_hidden_layers=2, num_key_value_heads=1, pad_token_id=0), "score"),
}
DECODERS = {"gpt2": "transformer", "llama": "model", "qwen2": "model"}  # scoring every token; the body's attribute


def tiny_model(arch: str = "bert", num_labels: int = 3, seed: int = 0, dropout: bool = True, **overrides):
    """A randomly initialised tiny sequence classifier of the given architecture."""
    config_name, model_name, extra, _ = ARCHITECTURES[arch]
    kwargs = {**_COMMON, **extra, "num_labels": num_labels, **overrides}
    if arch == "distilbert":
        for key in ("hidden_size", "num_attention_heads", "intermediate_size"):
            kwargs.pop(key)
    if arch == "gpt2":
        for key in ("hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings"):
            kwargs.pop(key)
    config = getattr(transformers, config_name)(**kwargs)
    if not dropout:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob", "dropout",
                     "attention_dropout", "seq_classif_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                     "summary_first_dropout", "pooler_dropout", "classifier_dropout"):
            if hasattr(config, name) and isinstance(getattr(config, name), float):
                setattr(config, name, 0.0)
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config)


def save_tiny_checkpoint(path, words: list[str], num_labels: int = 3, arch: str = "bert") -> str:
    """A tiny random classifier (BERT unless ``arch`` says) and a word-level tokenizer of ``words``, saved in ``path``
    as a Hub checkpoint."""
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", *words]) + "\n")
    transformers.BertTokenizerFast(vocab=str(path / "vocab.txt")).save_pretrained(path)  # transformers 5: vocab=
    tiny_model(arch, num_labels=num_labels, initializer_range=0.5).save_pretrained(path)
    return str(path)


def token_dataset(n: int = 64, num_labels: int = 3, seed: int = 0, with_labels: bool = True,
                  variable_length: bool = False) -> datasets.Dataset:
    """``n`` random token sequences (distinct, so a row identifies its sample) with random labels;
    with ``variable_length``, rows have 3 to SEQ_LEN real tokens followed by padding (token 0, mask 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, SEQ_LEN), generator=g)
    ids[:, 0] = 1  # a CLS-like first token
    mask = torch.ones_like(ids)
    if variable_length:
        lengths = torch.randint(3, SEQ_LEN + 1, (n,), generator=g)
        mask = (torch.arange(SEQ_LEN)[None, :] < lengths[:, None]).long()
        ids = ids * mask
    assert len({row_key(r) for r in ids.tolist()}) == n
    columns = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    if with_labels:
        columns["labels"] = torch.randint(0, num_labels, (n,), generator=g).tolist()
    return datasets.Dataset.from_dict(columns)


def load_script(name: str, folder: str = "scripts"):
    """Import ``<folder>/<name>.py`` as a module, so tests can call its ``main``."""
    path = os.path.join(REPO, folder, f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def accelerate_launch(script: str, argv: list[str], num_processes: int = 2, env: dict | None = None
                      ) -> subprocess.CompletedProcess:
    """Run ``script`` as ``accelerate launch`` does: ``num_processes`` CPU processes talking over gloo, a real
    distributed run, with ``env`` added to the environment. Fails the test with the end of stderr when any process
    fails."""
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return run_python(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(port), script, *argv], env)


def run_python(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """``python <argv>`` offline, one thread per process, with the repository importable (and ``env`` added);
    asserts it succeeded."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
    result = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def row_key(input_ids) -> tuple:
    """A sample's identity: its real tokens (padding, token 0, left out, so trimmed rows keep their key)."""
    return tuple(int(t) for t in input_ids if int(t) != 0)


# one plain SGD step (no momentum, decay, warmup or clipping) on the first rows in order: the change of every
# parameter is -lr·grad, which a test can compute by hand (reference.sgd_step_of)
SGD_STEP = dict(optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=0.0, max_steps=1,
                train_sampling_strategy="sequential")


def make_args(output_dir, **overrides):
    base = dict(
        output_dir=output_dir, per_device_train_batch_size=4, per_device_eval_batch_size=8, max_steps=4, logging_steps=1,
        learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=7,
    )
    return MMRTrainingArguments(**{**base, **overrides})


def rows(dataset, start, stop):
    part = dataset[start:stop]
    return {k: torch.tensor(v) for k, v in part.items()}


class RecordingTrainer(MMRTrainer):
    """Records what each step scored, selected and trained on, with the weights it scored with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.selections, self.trained = [], []

    def _select(self, candidates, micro_step):
        """A placeholder micro-batch (a process without real rows in an epoch's last round) selects nothing."""
        placeholder = self._is_placeholder(candidates)
        selected = super()._select(candidates, micro_step)
        self.selections.append(dict(
            step=self.state.global_step,
            candidates={k: v.clone() for k, v in candidates.items()},
            selected=[] if placeholder else [row_key(r) for r in selected["input_ids"]],
            weights=copy.deepcopy(self.model.state_dict()),
        ))
        return selected

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Records the rows trained on (none for a placeholder micro-batch)."""
        self.trained.append([] if self._is_placeholder(inputs) else [row_key(r) for r in inputs["input_ids"]])
        return super().training_step(model, inputs, num_items_in_batch)
