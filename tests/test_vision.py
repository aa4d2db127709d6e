"""The torchvision path: models, regimes, the orthogonal classifier and run_image.py, on tiny inputs."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from builders import accelerate_launch, load_script
from reference import brute_force_mms, brute_force_penalty, brute_force_selection_priority
from mmr_transformers import MMRTrainer, MMRTrainingArguments, find_classifier
from mmr_transformers.recipes.image_data import Cutout, load_image_datasets, subset_indices
from mmr_transformers.recipes.regimes import REGIMES, get_regime
from mmr_transformers.recipes.vision import CifarResNet, build_model, fix_orthogonal_classifier

run_image = load_script("run_image")


class RandomImages(Dataset):
    def __init__(self, n=24, classes=4, size=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": int(self.labels[i])}


def image_args(output_dir, **overrides):
    base = dict(output_dir=output_dir, per_device_train_batch_size=4, max_steps=2, learning_rate=0.05, report_to=[],
                use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=1, remove_unused_columns=False)
    return MMRTrainingArguments(**{**base, **overrides})


def saved_model_metrics(out, max_eval_samples):
    """Accuracy and mean cross-entropy of the resnet20 saved in ``out`` on the digits evaluation subset, predicted
    here image by image in eval mode."""
    _, evaluation, num_classes = load_image_datasets("digits", max_eval_samples=max_eval_samples)
    model = build_model("resnet20", num_classes)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(evaluation[i]["pixel_values"][None]).logits for i in range(len(evaluation))])
    labels = torch.tensor([int(evaluation[i]["labels"]) for i in range(len(evaluation))])
    return {"eval_accuracy": (logits.argmax(1) == labels).double().mean().item(),
            "eval_loss": torch.nn.functional.cross_entropy(logits, labels).item()}


def test_resnet44_has_the_published_parameter_count():
    parameters = sum(p.numel() for p in CifarResNet(44, 10).parameters())
    assert 0.65e6 < parameters < 0.67e6  # He et al. 2016, Table 6: 0.66M
    assert 0.26e6 < sum(p.numel() for p in CifarResNet(20, 10).parameters()) < 0.28e6  # 0.27M


@pytest.mark.parametrize("name, head", [("resnet20", "network.fc"), ("vgg16-bn", "network.classifier"),
                                        ("mobilenet_v2", "network.classifier.1")])
@pytest.mark.parametrize("selection", ["none", "mms", "loss", "entropy", "random"])
def test_each_model_trains_through_mmr_trainer_with_each_strategy(name, head, selection, output_dir, monkeypatch):
    """Two steps of each model (BatchNorm everywhere, dropout before VGG's and MobileNet's heads) with each strategy:
    a step trains the candidates kept, which are the lowest brute-force priorities of an eval-mode copy with the
    step's weights (any 4 of the 8 for random; MobileNet's first eval-mode logits are ~1e-10, so its losses and
    entropies tie), and the logged penalty is the brute-force R of the features and
    logits that the head saw in the training forward."""
    scored = recorded_scoring(monkeypatch)
    data = RandomImages()
    torch.manual_seed(0)
    model = build_model(name, 4)
    classifier = find_classifier(model)
    assert classifier.name == head
    trained, head_saw = [], []
    model.register_forward_hook(lambda module, args, kwargs, output: trained.append(kwargs["pixel_values"].clone())
                                if module.training else None, with_kwargs=True)
    classifier.module.register_forward_hook(lambda module, args, output: head_saw.append(
        (args[0].detach().clone(), output.detach().clone(), module.weight.detach().clone())) if module.training else None)
    args = image_args(output_dir, mmr_alpha=1e-3, selection=selection, train_sampling_strategy="sequential",
                      **({} if selection == "none" else {"selection_ratio": 2}))
    trainer = MMRTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert len(trained) == len(head_saw) == 2 and len(scored) == (0 if selection == "none" else 2)
    assert not torch.equal(head_saw[0][2], head_saw[1][2])
    reference = build_model(name, 4)
    for step, logged in enumerate(trainer.state.log_history[:2]):
        if selection == "none":
            rows = torch.arange(4 * step, 4 * step + 4)
        else:
            state, images, keep = scored[step]
            candidates = torch.arange(8 * step, 8 * step + 8)
            torch.testing.assert_close(images, data.images[candidates])
            if selection != "random":
                reference.load_state_dict(state)
                with torch.no_grad():
                    logits = reference.eval()(pixel_values=images).logits.numpy()
                weight = find_classifier(reference).weight.detach().numpy()
                priority = brute_force_selection_priority(selection, logits, weight, data.labels[candidates].numpy())
                kept, passed_over = priority[keep], np.delete(priority, keep)  # up to float32 rounding:
                assert kept.max() <= passed_over.min() + 1e-5 * np.abs(priority).max()  # MobileNet ties at init
            assert logged["mmr/samples_scored"] == 8 and logged["mmr/samples_trained"] == 4 and len(set(keep)) == 4
            rows = candidates[keep]
        torch.testing.assert_close(trained[step], data.images[rows])
        features, logits, weight = head_saw[step]
        assert logged["mmr/penalty"] == pytest.approx(
            brute_force_penalty(features.numpy(), logits.numpy(), data.labels[rows].numpy(), weight.numpy()), rel=1e-5)


def test_wide_resnet_has_the_published_size_and_trains_a_selected_step(output_dir):
    model = build_model("wrn28-10", 100)
    assert find_classifier(model).name == "network.fc" and find_classifier(model).num_classes == 100
    assert 36.4e6 < sum(p.numel() for p in model.parameters()) < 36.6e6  # 36.5M
    before = model.network.fc.weight.detach().clone()
    args = image_args(output_dir, per_device_train_batch_size=2, max_steps=1, mmr_alpha=1e-3, selection="mms",
                      selection_ratio=2, optim="sgd")
    trainer = MMRTrainer(model=model, args=args, train_dataset=RandomImages(n=4, classes=100))
    trainer.train()
    assert trainer.state.log_history[0]["mmr/samples_trained"] == 2 and not torch.equal(model.network.fc.weight, before)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet45'; choose one of \['resnet110', 'resnet20'"):
        build_model("resnet45", 10)


@pytest.mark.parametrize("name, rates", [
    ("resnet44-cifar10-early", {0: 0.1, 24991: 0.1, 24992: 0.01, 27334: 0.01, 27335: 0.001, 29678: 0.0001, 43999: 0.0001}),
    ("resnet44-cifar10-standard", {0: 0.1, 63260: 0.1, 63261: 0.01, 95282: 0.001, 128084: 0.0001}),
    ("wrn28-10-cifar100-early", {39049: 0.1, 39050: 0.02, 41393: 0.004, 43736: 0.0008}),
    ("wrn28-10-cifar100-standard", {46859: 0.1, 46860: 0.02, 93720: 0.004, 124960: 0.0008}),
    ("mobilenet-imagenet", {150119: 0.1, 150120: 0.01, 300240: 0.001, 400320: 0.0001}),
])
def test_regimes_give_the_published_rates_at_the_published_steps(name, rates):
    regime = get_regime(name)
    for step, rate in rates.items():
        assert regime.lr_at(step) == pytest.approx(rate, rel=1e-9), step
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = regime.optimizer_and_scheduler(model)
    assert optimizer.param_groups[0]["momentum"] == 0.9 and optimizer.param_groups[0]["weight_decay"] == regime.weight_decay


def test_regime_schedule_drives_the_optimizer_step_by_step():
    regime = get_regime("resnet44-cifar10-early", scale=0.001)  # drops at steps 25, 27, 30 of 44
    assert regime.milestones == (25, 27, 30) and regime.total_steps == 44
    optimizer, scheduler = regime.optimizer_and_scheduler(torch.nn.Linear(3, 2))
    seen = []
    for _ in range(32):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[24] == pytest.approx(0.1) and seen[25] == pytest.approx(0.01)
    assert seen[27] == pytest.approx(0.001) and seen[30] == pytest.approx(0.0001)


def test_mobilenet_regime_decays_only_convolution_weights():
    model = build_model("mobilenet_v2", 10)
    optimizer, _ = get_regime("mobilenet-imagenet").optimizer_and_scheduler(model)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] > 0 and plain["weight_decay"] == 0
    assert all(p.ndim == 4 for p in decayed["params"]) and all(p.ndim != 4 for p in plain["params"])


def test_unknown_regime_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown regime 'fast'; choose one of \['mobilenet-imagenet'"):
        get_regime("fast")
    assert set(REGIMES) >= {"resnet44-cifar10-early", "wrn28-10-cifar100-early"}


def test_orthogonal_classifier_stays_frozen_and_orthonormal_while_mms_and_mmr_train(output_dir):
    torch.manual_seed(0)
    model = build_model("resnet20", 4)
    linear = fix_orthogonal_classifier(model)
    frozen = linear.weight.detach().clone()
    torch.testing.assert_close(frozen @ frozen.T, torch.eye(4), atol=1e-6, rtol=0)
    encoder_before = model.network.conv.weight.detach().clone()
    args = image_args(output_dir, mmr_alpha=1e-2, selection="mms", selection_ratio=2, max_steps=3, weight_decay=0.1)
    trainer = MMRTrainer(model=model, args=args, train_dataset=RandomImages())
    trainer.train()
    assert torch.equal(linear.weight, frozen) and torch.equal(linear.bias, torch.zeros(4))
    assert not torch.equal(model.network.conv.weight, encoder_before)
    assert trainer.state.log_history[0]["mmr/mms_selected"] <= trainer.state.log_history[0]["mmr/mms_candidates"]


def recorded_scoring(monkeypatch) -> list:
    """(weights and buffers, the images scored, the rows kept) of each scoring pass the trainer runs from now on."""
    import copy
    import mmr_transformers.trainer as trainer_module
    select_rows, scored = trainer_module.select_rows, []

    def recording_select_rows(model, weight, inputs, num_keep, *args, **kwargs):
        state = copy.deepcopy(model.state_dict())
        chosen = select_rows(model, weight, inputs, num_keep, *args, **kwargs)
        scored.append((state, inputs["pixel_values"].clone(), chosen.keep.tolist()))
        return chosen

    monkeypatch.setattr(trainer_module, "select_rows", recording_select_rows)
    return scored


def test_a_batchnorm_model_keeps_the_lowest_margins_of_its_eval_mode_forward(output_dir, monkeypatch):
    """Scoring runs in eval mode, BatchNorm on its running statistics: each step keeps the candidates whose margins,
    by brute force on the logits of an eval-mode copy with that step's weights and statistics, are lowest."""
    scored = recorded_scoring(monkeypatch)
    torch.manual_seed(0)
    model = build_model("resnet20", 4)
    trainer = MMRTrainer(model=model, train_dataset=RandomImages(), args=image_args(
        output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=4, max_steps=3, learning_rate=0.5))
    trainer.train()
    reference = build_model("resnet20", 4)
    in_train_mode = 0
    for state, images, keep in scored:
        reference.load_state_dict(state)
        weight = reference.network.fc.weight.detach().numpy()
        with torch.no_grad():
            margins = brute_force_mms(reference.eval()(pixel_values=images).logits.numpy(), weight)
            batch_statistics = brute_force_mms(reference.train()(pixel_values=images).logits.numpy(), weight)
        assert sorted(keep) == sorted(np.argsort(margins, kind="stable")[:len(keep)].tolist())
        in_train_mode += sorted(keep) != sorted(np.argsort(batch_statistics, kind="stable")[:len(keep)].tolist())
    assert len(scored) == 3 and in_train_mode  # train mode's batch statistics would have kept other rows


def test_cutout_zeroes_one_square():
    torch.manual_seed(3)
    image = Cutout(8)(torch.ones(3, 32, 32))
    zeros = (image == 0).all(dim=0)
    rows, cols = zeros.any(dim=1).sum().item(), zeros.any(dim=0).sum().item()
    assert 0 < zeros.sum() <= 64 and rows <= 8 and cols <= 8 and zeros.sum() == rows * cols


def test_subsets_are_seeded_and_the_same_for_every_run():
    assert subset_indices(100, 10) == subset_indices(100, 10) and len(subset_indices(100, 10)) == 10
    assert subset_indices(100, None) is None and subset_indices(5, 10) is None


def test_run_image_end_to_end_on_digits_with_a_regime(tmp_path):
    out = tmp_path / "out"
    results = run_image.main(["--dataset", "digits", "--model", "resnet20", "--regime", "resnet44-cifar10-early",
                              "--regime_scale", "0.0002", "--selection", "loss", "--selection_ratio", "2",
                              "--max_train_samples", "64", "--max_eval_samples", "32", "--output_dir", str(out),
                              "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
                              "--logging_steps", "1", "--per_device_train_batch_size", "8"])
    config = json.load(open(out / "run_config.json"))
    assert config["training"]["max_steps"] == 9 and config["training"]["learning_rate"] == 0.1  # from the regime
    assert config["training"]["mmr_alpha_schedule"] == "linear" and config["training"]["mmr_alpha_end"] == 1e-3
    assert config["training"]["per_device_train_batch_size"] == 8  # the command line wins
    assert results["eval_samples"] == 32 and results["train_samples"] == 64
    recomputed = saved_model_metrics(out, 32)
    assert results["eval_accuracy"] == pytest.approx(recomputed["eval_accuracy"], abs=1e-12)
    assert results["eval_loss"] == pytest.approx(recomputed["eval_loss"], rel=1e-4)  # the same weights and images
    history = json.load(open(out / "trainer_state.json"))["log_history"]
    rates = [h["learning_rate"] for h in history if "learning_rate" in h]
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(1e-4)  # drops at 5, 5, 6 of 9
    alphas = [h["mmr/alpha"] for h in history if "mmr/alpha" in h]
    assert alphas[0] == 1e-5 and alphas[-1] == 1e-3


@pytest.mark.distributed
def test_run_image_under_accelerate_launch_splits_the_candidates_between_two_processes(tmp_path):
    """Two CPU processes over gloo: each scores its own k·b = 16 images, so one epoch of 64 takes 64 / 32 = 2 steps
    (4 in one process), and every process exits 0 after rank 0 wrote the results."""
    out = tmp_path / "out"
    accelerate_launch(run_image.__file__, [
        "--dataset", "digits", "--model", "resnet20", "--selection", "mms", "--selection_ratio", "2",
        "--mmr_alpha", "1e-3", "--num_train_epochs", "1", "--max_train_samples", "64", "--max_eval_samples", "32",
        "--per_device_train_batch_size", "8", "--output_dir", str(out), "--use_cpu", "--report_to", "none",
        "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1"])
    results = json.load(open(out / "all_results.json"))
    assert results["train_samples"] == 64 and results["eval_samples"] == 32
    recomputed = saved_model_metrics(out, 32)
    assert results["eval_accuracy"] == pytest.approx(recomputed["eval_accuracy"], abs=1e-12)
    # not to 1e-4 as in one process: each rank evaluates its half with its own BatchNorm running statistics (DDP
    # does not sync them, and the last step leaves the ranks' apart), while the saved model holds rank 0's
    assert results["eval_loss"] == pytest.approx(recomputed["eval_loss"], rel=2e-2)
    assert json.load(open(out / "trainer_state.json"))["global_step"] == 2


def test_imagefolder_without_split_folders_says_what_it_needs(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match=r"needs a 'train' folder of class folders \(ImageFolder\); found \['cats'\]"):
        run_image.main(["--dataset", "imagefolder", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--use_cpu"])


def test_images_of_another_size_than_image_size_are_refused_with_the_fix(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split / "cats").mkdir(parents=True)
        Image.new("RGB", (40, 36)).save(tmp_path / split / "cats" / "0.png")
    with pytest.raises(ValueError, match=r"training images are 40×36 \(the first one\), but image_size is 32.*"
                                         r"Pass image_size=40"):
        load_image_datasets("imagefolder", str(tmp_path))
    train, evaluation, _ = load_image_datasets("imagefolder", str(tmp_path), image_size=40)
    assert train[0]["pixel_values"].shape == evaluation[0]["pixel_values"].shape == (3, 40, 40)


def test_a_regime_shares_its_batch_between_processes_and_a_lone_alpha_replaces_its_ramp(monkeypatch):
    regime = ["--dataset", "digits", "--regime", "resnet44-cifar10-early", "--output_dir", "unused", "--use_cpu"]
    _, args = run_image.parse_args(regime)
    assert (args.per_device_train_batch_size, args.mmr_alpha, args.mmr_alpha_end, args.mmr_alpha_schedule) == (
        64, 1e-5, 1e-3, "linear")
    for lone_alpha in (["--mmr_alpha", "0"], ["--mmr-alpha", "0"], ["--mmr-alpha=0"]):
        _, args = run_image.parse_args([*regime, *lone_alpha])
        assert (args.mmr_alpha, args.mmr_alpha_end, args.mmr_alpha_schedule, args.mmr_enabled) == (
            0, None, "constant", False), lone_alpha
    _, args = run_image.parse_args([*regime, "--mmr_alpha", "1e-4", "--mmr_alpha_end", "1e-2"])
    assert (args.mmr_alpha, args.mmr_alpha_end, args.mmr_alpha_schedule) == (1e-4, 1e-2, "linear")
    monkeypatch.setenv("WORLD_SIZE", "4")  # what accelerate launch tells each of 4 processes
    assert run_image.launched_processes() == 4
    monkeypatch.delenv("WORLD_SIZE")  # (TrainingArguments would then look for the other processes)
    monkeypatch.setattr(run_image, "launched_processes", lambda: 4)
    image, args = run_image.parse_args(regime)
    assert args.per_device_train_batch_size == 16 and args.max_steps == 44_000
    monkeypatch.setattr(run_image, "launched_processes", lambda: 3)
    with pytest.raises(SystemExit, match=r"counts its steps in batches of 64, which 3 process\(es\) × 1 accumulated micro-batches cannot share evenly"):
        run_image.parse_args(regime)


@pytest.mark.parametrize("flag, value", [("--lr_scheduler_type", "cosine"), ("--warmup_steps", "10"), ("--optim", "adamw_torch"),
                                         ("--adam_beta1", "0.8"), ("--adam_epsilon", "1e-6"), ("--optim_args", "a=1")])
def test_a_regime_refuses_the_schedule_and_optimizer_flags_it_would_ignore(flag, value):
    for spelling in (flag, flag.replace("_", "-")):  # HfArgumentParser takes both
        with pytest.raises(SystemExit, match=f"{flag}: a regime brings its own optimizer and learning-rate drops"):
            run_image.parse_args(["--regime", "resnet44-cifar10-early", spelling, value, "--output_dir", "unused"])
    abbreviated = flag[:-2]  # a prefix argparse would expand, past the pre-parser's refusal: not a flag here
    with pytest.raises(SystemExit, match=rf"unknown command-line arguments \['{abbreviated}', '{value}'\]"):
        run_image.parse_args(["--dataset", "digits", "--regime", "resnet44-cifar10-early", abbreviated, value,
                              "--output_dir", "unused"])


def test_a_regime_clips_no_gradients_and_counts_accumulated_micro_batches_in_its_batch():
    regime = ["--dataset", "digits", "--regime", "resnet44-cifar10-early", "--output_dir", "unused", "--use_cpu"]
    _, args = run_image.parse_args(regime)
    assert args.max_grad_norm == 0.0  # Trainer's default, 1.0, would clip the regime's SGD steps
    _, args = run_image.parse_args([*regime, "--max_grad_norm", "1.0"])
    assert args.max_grad_norm == 1.0  # the command line still wins
    for spelling in ("--gradient_accumulation_steps", "--gradient-accumulation-steps"):
        _, args = run_image.parse_args([*regime, spelling, "4"])
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 4)  # 16 · 4 = the 64
    with pytest.raises(SystemExit, match=r"1 process\(es\) × 3 accumulated micro-batches cannot share evenly"):
        run_image.parse_args([*regime, "--gradient_accumulation_steps", "3"])
    _, args = run_image.parse_args([*regime, "--gradient_accumulation_steps", "3", "--per-device-train-batch-size", "20"])
    assert args.per_device_train_batch_size == 20  # the fix the refusal names works


def test_a_regime_scale_without_a_regime_or_at_most_0_and_sample_caps_below_1_are_refused():
    with pytest.raises(SystemExit, match=r"--regime_scale 0.5 without --regime: it scales a regime's steps"):
        run_image.parse_args(["--dataset", "digits", "--regime-scale", "0.5", "--output_dir", "unused"])
    for scale in ("0", "-0.2"):
        with pytest.raises(SystemExit, match=rf"regime_scale {float(scale)}: a regime's steps are multiplied by it"):
            run_image.parse_args(["--dataset", "digits", "--regime", "resnet44-cifar10-early", "--regime_scale", scale,
                                  "--output_dir", "unused"])
    for flag, what in (("--max_train_samples", "train on"), ("--max_eval_samples", "evaluate on")):
        with pytest.raises(SystemExit, match=rf"{flag} -1: there would be no rows to {what}"):
            run_image.main(["--dataset", "digits", "--model", "resnet20", flag, "-1", "--output_dir", "unused",
                            "--use_cpu", "--report_to", "none"])


def test_an_image_folder_whose_splits_have_other_classes_is_refused(tmp_path):
    from PIL import Image

    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "wolf"))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / split / name / "0.png")
    with pytest.raises(ValueError, match=r"the evaluation classes \['cat', 'wolf'\] are not the training classes "
                                         r"\['cat', 'dog'\]: labels would mean other classes"):
        load_image_datasets("imagefolder", str(tmp_path))


def test_image_scale_scores_the_candidates_downscaled_and_trains_them_whole(output_dir, monkeypatch):
    """selection_scoring_image_scale=0.5: the scoring pass sees each candidate of the step resized to 16×16 (the
    resize tested against a box filter in test_cheap_scoring), the step trains the kept candidates at 32×32."""
    from mmr_transformers import shorten_for_scoring
    scored = recorded_scoring(monkeypatch)
    data = RandomImages()
    trained = []
    torch.manual_seed(0)
    model = build_model("resnet20", 4)
    model.register_forward_hook(lambda module, args, kwargs, output: trained.append(kwargs["pixel_values"].clone())
                                if module.training else None, with_kwargs=True)
    MMRTrainer(model=model, train_dataset=data, args=image_args(
        output_dir, mmr_alpha=0.0, selection="mms", selection_ratio=2, max_steps=3, selection_scoring_image_scale=0.5,
        train_sampling_strategy="sequential")).train()
    assert len(scored) == 3 and [tuple(t.shape) for t in trained] == [(4, 3, 32, 32)] * 3
    for step, ((_, images, keep), batch) in enumerate(zip(scored, trained)):
        assert images.shape == (8, 3, 16, 16)
        candidates = data.images[8 * step: 8 * step + 8]
        torch.testing.assert_close(images, shorten_for_scoring({"pixel_values": candidates}, image_scale=0.5)["pixel_values"])
        torch.testing.assert_close(batch, candidates[sorted(keep)])


def test_image_flags_a_dataset_would_ignore_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"download: only CIFAR-10/100 are downloaded \(by torchvision\); dataset "
                                         r"'imagefolder' would ignore it"):
        load_image_datasets("imagefolder", str(tmp_path), download=True)
    with pytest.raises(ValueError, match=r"dataset 'digits' is scikit-learn's, built in, so --data_dir would be ignored"):
        load_image_datasets("digits", str(tmp_path))
