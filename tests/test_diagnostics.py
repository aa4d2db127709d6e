"""Margin diagnostics: margin_diagnostics against per-sample brute force from independently computed features, the
callback through real short training runs (MMRTrainer and a plain Trainer), and the plot command."""

import dataclasses
import json
import math
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
import transformers

from builders import load_script, make_args, rows, tiny_model, token_dataset
from mmr_transformers import MarginDiagnosticsCallback, MMRTrainer, select_for_labeling
from mmr_transformers.diagnostics import margin_diagnostics
from mmr_transformers.diagnostics_callback import logged_scalars
from mmr_transformers.heads import find_classifier
from mmr_transformers.selection import get_selection_strategy, select_rows
from reference import brute_force_mms, independent_features
from test_imports import python

NUM_CLASSES = 4
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def spread_model(seed=0):
    """A tiny BERT (dropout on) whose samples spread over several (top-1, top-2) pairs: large initial weights and a
    random classifier of unit scale."""
    model = tiny_model(num_labels=NUM_CLASSES, seed=seed, initializer_range=1.0)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator))
        model.classifier.bias.copy_(0.1 * torch.randn(NUM_CLASSES, generator=generator))
    return model


def batches_of(dataset, size=8):
    return [rows(dataset, start, min(start + size, len(dataset))) for start in range(0, len(dataset), size)]


def brute_force(model, batches):
    """Per sample, in float64 from features computed without hooks (eval mode): margin, top-1 and top-2 class (by
    sorting the row), ||phi||, label and ||W[y] - W[m]||² with m the highest-scoring wrong class."""
    model.eval()
    weight = model.classifier.weight.detach().double().numpy()
    bias = model.classifier.bias.detach().double().numpy()
    samples = []
    for batch in batches:
        with torch.no_grad():
            phi = independent_features(model, batch).double().numpy()
        logits = phi @ weight.T + bias
        margins = brute_force_mms(logits, weight)
        for n, row in enumerate(logits):
            order = sorted(range(NUM_CLASSES), key=lambda j: row[j], reverse=True)
            sample = dict(margin=margins[n], top1=order[0], top2=order[1], norm=math.sqrt(phi[n] @ phi[n]))
            if "labels" in batch:
                y = int(batch["labels"][n])
                m = max((j for j in range(NUM_CLASSES) if j != y), key=lambda j: row[j])
                sample |= dict(label=y, gap=float(((weight[y] - weight[m]) ** 2).sum()))
            samples.append(sample)
    return samples


def class_means(samples, key):
    by_class = [[s["margin"] for s in samples if s[key] == c] for c in range(NUM_CLASSES)]
    return [float(np.mean(margins)) if margins else None for margins in by_class]


def assert_means_equal(got, expected):
    assert [g is None for g in got] == [e is None for e in expected]
    assert [g for g in got if g is not None] == pytest.approx([e for e in expected if e is not None],
                                                              rel=1e-5, abs=1e-6)


def test_the_diagnostics_are_those_of_per_sample_brute_force_computed_in_eval_mode():
    model = spread_model()
    batches = batches_of(token_dataset(48, num_labels=NUM_CLASSES))
    expected = brute_force(model, batches)
    margins = np.array([s["margin"] for s in expected])
    ranked = np.sort(margins)
    # thresholds halfway between two neighbouring margins: the shares within them are exactly 5/48 and 30/48
    epsilons = [0.0, (ranked[4] + ranked[5]) / 2, (ranked[29] + ranked[30]) / 2]
    model.train()  # dropout on: only an eval-mode pass gives the brute-force margins
    got = margin_diagnostics(model, batches, epsilons=epsilons, quantiles=QUANTILES, lowest_share=0.25,
                             return_margins=True)
    assert model.training  # its mode restored

    assert got["num_samples"] == 48 and got["num_classes"] == NUM_CLASSES and got["num_labelled"] == 48
    assert got["margins"] == pytest.approx(margins.tolist(), rel=1e-5, abs=1e-6)
    assert got["margin_mean"] == pytest.approx(margins.mean(), rel=1e-5, abs=1e-6)
    assert list(got["margin_quantiles"]) == ["q5", "q25", "q50", "q75", "q95"]
    assert list(got["margin_quantiles"].values()) == pytest.approx(np.quantile(margins, QUANTILES).tolist(),
                                                                   rel=1e-5, abs=1e-6)
    assert list(got["within_epsilon"].values()) == [0.0, 5 / 48, 30 / 48]
    assert list(got["within_epsilon"]) == [f"{e:g}" for e in epsilons]
    assert_means_equal(got["mean_margin_by_predicted_class"], class_means(expected, "top1"))
    assert_means_equal(got["mean_margin_by_true_class"], class_means(expected, "label"))

    lowest = [expected[i] for i in np.argsort(margins)[:12]]  # ceil(0.25 · 48)
    pairs = Counter((s["top1"], s["top2"]) for s in lowest)
    assert len(pairs) >= 3  # the model spreads its samples: the counts below are not one trivial pair
    assert {(p["top1"], p["top2"]): p["count"] for p in got["lowest_margin_pairs"]} == pairs
    assert [p["count"] for p in got["lowest_margin_pairs"]] == sorted(pairs.values(), reverse=True)

    norms = np.array([s["norm"] for s in expected])
    assert got["feature_norm_mean"] == pytest.approx(norms.mean(), rel=1e-5, abs=1e-6)
    assert got["feature_norm_max"] == pytest.approx(norms.max(), rel=1e-5, abs=1e-6)
    assert got["feature_norm_sq_max"] == pytest.approx(norms.max() ** 2, rel=1e-5, abs=1e-6)
    assert got["weight_gap_sq_mean"] == pytest.approx(np.mean([s["gap"] for s in expected]), rel=1e-5, abs=1e-6)
    assert got["accuracy"] == np.mean([s["top1"] == s["label"] for s in expected]) > 0
    json.dumps(got)  # JSON-able as it is


def test_without_labels_the_label_fields_are_absent_and_gather_sees_every_batch_before_the_summary():
    model = spread_model().eval()
    batches = [{k: v for k, v in batch.items() if k != "labels"} for batch in batches_of(token_dataset(20, seed=3))]
    kept = [{k: v[:-1] for k, v in batch.items()} for batch in batches]  # what the gather below leaves

    got = margin_diagnostics(model, batches, return_margins=True,
                             gather=lambda part: {key: value[:-1] for key, value in part.items()})
    assert not model.training
    expected = brute_force(model, kept)
    assert got["num_samples"] == 20 - len(batches) == len(expected)
    assert got["margins"] == pytest.approx([s["margin"] for s in expected], rel=1e-5, abs=1e-6)
    assert got["feature_norm_max"] == pytest.approx(max(s["norm"] for s in expected), rel=1e-5, abs=1e-6)
    assert not {"num_labelled", "accuracy", "mean_margin_by_true_class", "weight_gap_sq_mean"} & set(got)


def test_no_samples_or_an_empty_lowest_share_is_refused():
    model = spread_model()
    with pytest.raises(ValueError, match="no samples"):
        margin_diagnostics(model, [])
    with pytest.raises(ValueError, match="lowest_share"):
        margin_diagnostics(model, batches_of(token_dataset(8)), lowest_share=0)


def test_options_that_would_share_a_record_key_are_refused():
    batches = batches_of(token_dataset(8))
    with pytest.raises(ValueError, match=r"quantiles \[0.5, 0.5000001\] give the record keys \['q50', 'q50'\], some "
                                         r"twice: one value would hide another"):
        margin_diagnostics(spread_model(), batches, quantiles=(0.5, 0.5000001))
    with pytest.raises(ValueError, match=r"epsilons \[0.1, 0.1000001\] give the record keys \['0.1', '0.1'\]"):
        margin_diagnostics(spread_model(), batches, epsilons=(0.1, 0.1000001))
    assert set(margin_diagnostics(spread_model(), batches, quantiles=(0.5, 0.500001))["margin_quantiles"]) == {
        "q50", "q50.0001"}


def test_the_callback_takes_options_as_generators_and_refuses_a_set_name_for_a_single_set(tmp_path):
    trainer = MMRTrainer(model=spread_model(), args=make_args(str(tmp_path)),
                         eval_dataset=token_dataset(20, num_labels=NUM_CLASSES, seed=1))
    with pytest.raises(ValueError, match=r"eval_dataset='dev' names one of several evaluation sets, but the trainer "
                                         r"has one \(not a dict\): leave eval_dataset out"):
        MarginDiagnosticsCallback(trainer, eval_dataset="dev")
    callback = MarginDiagnosticsCallback(trainer, epsilons=(e for e in (0.05, 0.5)), quantiles=(q for q in (0.5,)))
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    callback.on_train_begin(trainer.args, state, control)
    callback.on_evaluate(trainer.args, state, control)
    margins = [s["margin"] for s in brute_force(trainer.model, batches_of(trainer.eval_dataset))]
    (record,) = callback.records
    assert record["within_epsilon"] == pytest.approx({"0.05": np.mean(np.array(margins) <= 0.05),
                                                      "0.5": np.mean(np.array(margins) <= 0.5)})
    assert record["margin_quantiles"] == pytest.approx({"q50": np.median(margins)}, rel=1e-5)


def test_the_module_imports_without_transformers_and_the_callback_is_a_lazy_top_level_name():
    out = python("import sys\nimport mmr_transformers.diagnostics\n"
                 "print('transformers' in sys.modules)\n"
                 "from mmr_transformers import MarginDiagnosticsCallback\n"
                 "print('transformers' in sys.modules, MarginDiagnosticsCallback.__module__)\n")
    assert out.splitlines() == ["False", "True mmr_transformers.diagnostics_callback"]


def train(output_dir, callback, trainer_class=MMRTrainer, eval_dataset=None, resume=None, **overrides):
    """A short run evaluating at steps 2 and 4 (checkpoints there too); ``callback(trainer)`` makes its callback."""
    args = make_args(output_dir, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                     mmr_alpha=0.1, selection="mms", selection_ratio=2, **overrides)
    if trainer_class is transformers.Trainer:
        plain = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
        args = transformers.TrainingArguments(**{k: v for k, v in args.to_dict().items() if k in plain})
    eval_dataset = token_dataset(20, num_labels=NUM_CLASSES, seed=1) if eval_dataset is None else eval_dataset
    trainer = trainer_class(model=spread_model(), args=args, eval_dataset=eval_dataset,
                            train_dataset=token_dataset(32, num_labels=NUM_CLASSES))
    if callback:
        trainer.add_callback(callback(trainer))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def records(output_dir):
    with open(os.path.join(output_dir, MarginDiagnosticsCallback.FILE_NAME)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def mmr_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diagnosed")
    with_callback = train(str(folder / "with"), MarginDiagnosticsCallback)
    without = train(str(folder / "without"), None)
    return with_callback, without, str(folder / "with")


def test_the_callback_records_each_evaluation_and_logs_it_without_changing_training(mmr_run):
    trainer, without, output_dir = mmr_run
    weights, reference_weights = trainer.model.state_dict(), without.model.state_dict()
    assert all(torch.equal(weights[name], reference_weights[name]) for name in reference_weights)

    saved = records(output_dir)
    assert [r["step"] for r in saved] == [2, 4]
    logged = [entry for entry in trainer.state.log_history if any(k.startswith("margins/") for k in entry)]
    assert [entry["step"] for entry in logged] == [2, 4]
    for entry, record in zip(logged, saved):
        scalars = {k: v for k, v in entry.items() if k.startswith("margins/")}
        assert scalars == logged_scalars(record)
        assert {"margins/q50", "margins/within_0.1", "margins/weight_gap_sq_mean", "margins/accuracy"} <= set(scalars)
    assert saved[0]["margin_quantiles"] != saved[1]["margin_quantiles"]  # the model moved between evaluations

    # the last evaluation saw the final weights: its record is the brute force of the final model on the eval set
    expected = brute_force(trainer.model, batches_of(trainer.eval_dataset))
    margins = [s["margin"] for s in expected]
    assert list(saved[-1]["margin_quantiles"].values()) == pytest.approx(np.quantile(margins, QUANTILES).tolist(),
                                                                         rel=1e-5, abs=1e-6)
    assert saved[-1]["accuracy"] == np.mean([s["top1"] == s["label"] for s in expected])
    assert saved[-1]["weight_gap_sq_mean"] == pytest.approx(np.mean([s["gap"] for s in expected]), rel=1e-5, abs=1e-6)


def test_a_resumed_run_keeps_the_records_up_to_its_checkpoint(mmr_run, tmp_path):
    _, _, output_dir = mmr_run
    resumed_dir = str(tmp_path / "resumed")
    shutil.copytree(output_dir, resumed_dir)
    first = records(resumed_dir)
    train(resumed_dir, MarginDiagnosticsCallback, resume=os.path.join(resumed_dir, "checkpoint-2"))
    again = records(resumed_dir)
    assert [r["step"] for r in again] == [2, 4]
    assert again[0] == first[0]  # kept from the file, not recomputed
    assert again[1]["margin_quantiles"] == pytest.approx(first[1]["margin_quantiles"], rel=1e-5, abs=1e-6)


def test_with_a_plain_trainer_and_several_eval_sets_the_named_one_is_diagnosed_once_per_evaluation(tmp_path):
    other = token_dataset(24, num_labels=NUM_CLASSES, seed=5)
    eval_sets = {"dev": token_dataset(20, num_labels=NUM_CLASSES, seed=1), "other": other}
    with pytest.raises(ValueError, match="several evaluation sets"):
        MarginDiagnosticsCallback(transformers.Trainer(model=spread_model(), eval_dataset=eval_sets,
                                                       args=make_args(str(tmp_path / "x"))))
    trainer = train(str(tmp_path / "plain"), lambda t: MarginDiagnosticsCallback(t, eval_dataset="other"),
                    trainer_class=transformers.Trainer, eval_dataset=eval_sets)
    saved = records(str(tmp_path / "plain"))
    assert [r["step"] for r in saved] == [2, 4] and saved[-1]["num_samples"] == 24
    expected = [s["margin"] for s in brute_force(trainer.model, batches_of(other))]
    assert list(saved[-1]["margin_quantiles"].values()) == pytest.approx(np.quantile(expected, QUANTILES).tolist(),
                                                                         rel=1e-5, abs=1e-6)


def test_the_plot_command_writes_pngs(mmr_run, tmp_path):
    _, _, output_dir = mmr_run
    plot_margins = load_script("plot_margins", "benchmarks")
    paths = plot_margins.main([f"mmr={output_dir}", os.path.join(output_dir, MarginDiagnosticsCallback.FILE_NAME),
                               "--out_dir", str(tmp_path / "plots")])
    assert [os.path.basename(p) for p in paths] == ["margin_quantiles.png", "lowest_margin_pairs.png"]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_plot_command_reads_a_study_records_embedded_diagnostics(mmr_run, tmp_path):
    _, _, output_dir = mmr_run
    plot_margins = load_script("plot_margins", "benchmarks")
    with open(os.path.join(output_dir, MarginDiagnosticsCallback.FILE_NAME)) as f:
        records = json.load(f)
    with open(tmp_path / "record.json", "w") as f:
        json.dump({"run": "x", "margin_diagnostics": records}, f)
    assert plot_margins.load_run(f"study={tmp_path / 'record.json'}") == ("study", records)
    assert plot_margins.load_run(str(tmp_path / "record.json")) == ("x", records)  # the run's name, not the folder's
    assert plot_margins.load_run(output_dir) == (os.path.basename(output_dir), records)
    with open(tmp_path / "empty.json", "w") as f:
        json.dump({"run": "y"}, f)
    with pytest.raises(SystemExit, match="holds no evaluation records"):
        plot_margins.load_run(str(tmp_path / "empty.json"))


def test_the_lowest_share_counts_the_ceiling_of_the_share_as_written():
    """0.07 of 100 samples is 7 (the float product 7.000000000000001 would count 8)."""
    got = margin_diagnostics(spread_model(), batches_of(token_dataset(100)), lowest_share=0.07)
    assert sum(pair["count"] for pair in got["lowest_margin_pairs"]) == 7


@pytest.mark.parametrize("dtype, rounding_error", [(torch.bfloat16, 1e-3), (torch.float16, 2e-4)])
def test_a_low_precision_model_gets_the_margins_of_its_layer_computed_in_fp32(dtype, rounding_error):
    """bf16 rounds logits near 10 to steps of 1/16, which would tie nearby margins: the diagnostics and MMS
    selection recompute W·phi + b in fp32 from what the layer saw, and so match float64 on the same rounded inputs.
    A bias of 30 on every class leaves every margin as it is and puts the logits where rounding is coarse."""
    model = spread_model()
    with torch.no_grad():
        model.classifier.bias += 30.0
    model = model.to(dtype)
    batches = batches_of(token_dataset(48, num_labels=NUM_CLASSES))
    expected = np.array([s["margin"] for s in brute_force(model, batches)])
    got = margin_diagnostics(model, batches, return_margins=True)["margins"]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)
    with torch.no_grad():
        low = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])
    from_low = brute_force_mms(low.double().numpy(), model.classifier.weight.detach().double().numpy())
    assert np.abs(from_low - expected).max() > rounding_error  # what margins of the rounded logits are off by
    candidates = {k: torch.cat([b[k] for b in batches]) for k in ("input_ids", "attention_mask")}
    order = np.argsort(expected, kind="stable")
    assert expected[order[12]] - expected[order[11]] > 1e-3  # a cut that fp32 rounding cannot move
    chosen = select_rows(model, find_classifier(model), candidates, 12, get_selection_strategy("mms"), chunk_size=8)
    assert sorted(chosen.keep.tolist()) == sorted(order[:12].tolist())
    pool = token_dataset(48, num_labels=NUM_CLASSES).with_format("torch")
    assert sorted(select_for_labeling(model, pool, 12, "mms", batch_size=8)) == sorted(order[:12].tolist())
