"""MMRSettings: every field declared once, read under its public name, validated in one place."""

import math
from dataclasses import fields

import pytest
import torch
from transformers import HfArgumentParser, TrainingArguments

from builders import make_args, tiny_model, token_dataset
from mmr_transformers import MMRSettings, MMRTrainer, MMRTrainingArguments
from mmr_transformers.selection import SELECTION_STRATEGIES, register_selection_strategy

MMR_FIELDS = [f for f in fields(MMRSettings)]


def test_every_setting_is_a_flag_with_its_declared_default_and_help(output_dir):
    parser = HfArgumentParser(MMRTrainingArguments)
    actions = {action.dest: action for action in parser._actions}
    (parsed,) = parser.parse_args_into_dataclasses(["--output_dir", output_dir])
    assert len(MMR_FIELDS) == 20
    for f in MMR_FIELDS:
        assert f.name in actions and actions[f.name].help == f.metadata["help"], f.name
        assert getattr(parsed, f.name) == f.default, f.name
        if "choices" in f.metadata:
            assert list(actions[f.name].choices) == list(f.metadata["choices"]), f.name


def test_plain_training_arguments_get_the_declared_defaults(output_dir):
    trainer = MMRTrainer(model=tiny_model("bert"), args=TrainingArguments(output_dir=output_dir, use_cpu=True, report_to=[]))
    assert isinstance(trainer.mmr, MMRSettings) and not isinstance(trainer.args, MMRSettings)
    assert {f.name: getattr(trainer.mmr, f.name) for f in MMR_FIELDS} == {f.name: f.default for f in MMR_FIELDS}


def test_the_trainer_reads_the_settings_object_it_was_given(output_dir):
    args = make_args(output_dir, mmr_alpha=0.25, selection="entropy", selection_ratio=3)
    trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(24))
    assert trainer.mmr is args and trainer.strategy.name == "entropy" and trainer.candidate_batch_size() == 12


def test_a_strategy_registered_later_is_a_valid_choice(output_dir):
    @register_selection_strategy("smallest_top_score")
    def smallest_top_score(logits, weight, labels, generator):
        return logits.max(dim=1).values

    try:
        (args,) = HfArgumentParser(MMRTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", output_dir, "--selection", "smallest_top_score", "--use_cpu"])
        assert args.selection == "smallest_top_score"
    finally:
        SELECTION_STRATEGIES.pop("smallest_top_score")
    with pytest.raises(ValueError, match=r"Unknown selection 'smallest_top_score'; choose one of \['none', 'entropy'"):
        make_args(output_dir, selection="smallest_top_score")


@pytest.mark.parametrize("settings, message", [
    (dict(mmr_alpha_end=1e-3), r"mmr_alpha_end set the end of the alpha schedule, which runs only with a schedule "
                               r"that moves alpha to it \(linear\) \(got mmr_alpha_schedule='constant'\)"),
    (dict(selection_ratio=2), r"selection_ratio set the candidate multiplier, which runs only with selection != 'none'"),
    (dict(selection="mms", selection_exploration=0.5), r"selection_exploration set the random share of cached selection, "
                                                       r"which runs only with selection_source='cached'"),
    (dict(selection="mms", selection_source="cached", selection_scoring_batch_size=64),
     r"selection_scoring_batch_size set the fresh scoring pass"),
    (dict(selection="mms", selection_scorer_refresh_steps=5), r"selection_scorer_refresh_steps set the int8 scorer's "
                                                             r"refresh, which runs only with selection_scorer='int8'"),
])
def test_a_setting_that_would_be_ignored_is_refused(settings, message, output_dir):
    with pytest.raises(ValueError, match=message):
        make_args(output_dir, **settings)


@pytest.mark.parametrize("settings, message", [
    (dict(mmr_alpha=math.nan), r"mmr_alpha must be >= 0 \(0 turns MMR off\); got nan, not a finite number"),
    (dict(mmr_alpha=math.inf), r"mmr_alpha must be >= 0 \(0 turns MMR off\); got inf, not a finite number"),
    (dict(mmr_alpha_schedule="linear", mmr_alpha_end=-1.0), r"mmr_alpha_end must be >= 0"),
    (dict(selection="mms", selection_ratio=math.inf), r"selection_ratio must be >= 1: it is the candidate multiplier k"),
    (dict(selection="mms", selection_ratio=math.nan), r"selection_ratio must be >= 1"),
    (dict(mmr_alpha_schedule="cosine"), r"Unknown mmr_alpha_schedule 'cosine'; choose one of \['constant', 'linear'\]"),
    (dict(selection="mms", selection_source="stale"), r"Unknown selection_source 'stale'; choose one of \['fresh', 'cached'\]"),
])
def test_values_that_cannot_be_used_are_refused(settings, message, output_dir):
    with pytest.raises(ValueError, match=message):
        make_args(output_dir, **settings)


@pytest.mark.parametrize("strategy", sorted(SELECTION_STRATEGIES))
def test_cached_selection_refuses_exactly_the_strategies_that_draw_within_a_batch(strategy, output_dir):
    drawing = {"random", "selective_backprop"}  # their keys are random draws relative to their batch
    assert SELECTION_STRATEGIES[strategy].draws == (strategy in drawing)
    if strategy in drawing:
        scoring = ", ".join(f"'{name}'" for name in sorted(set(SELECTION_STRATEGIES) - drawing))
        with pytest.raises(ValueError, match=rf"selection='{strategy}' draws its rows at random within each candidate "
                                             rf"batch.*Use selection_source='fresh' with it.*scores each sample "
                                             rf"\({scoring}\)"):
            make_args(output_dir, selection=strategy, selection_source="cached")
        assert make_args(output_dir, selection=strategy).selection == strategy  # fresh: fine
    else:
        assert make_args(output_dir, selection=strategy, selection_source="cached").cached_selection


def test_fields_changed_after_construction_are_checked_again_by_the_trainer(output_dir):
    args = make_args(output_dir)
    args.selection_ratio = 0.5
    with pytest.raises(ValueError, match="selection_ratio must be >= 1"):
        MMRTrainer(model=tiny_model("bert"), args=args)


def test_linear_schedule_ending_above_zero_turns_mmr_on_even_from_alpha_zero(output_dir):
    args = make_args(output_dir, mmr_alpha=0.0, mmr_alpha_end=1e-2, mmr_alpha_schedule="linear", max_steps=3)
    trainer = MMRTrainer(model=tiny_model("bert"), args=args, train_dataset=token_dataset(16))
    assert args.mmr_enabled
    trainer.train()
    alphas = [h["mmr/alpha"] for h in trainer.state.log_history if "loss" in h]
    assert alphas == [0.0, 5e-3, 1e-2] and torch.isfinite(torch.tensor(trainer.state.log_history[0]["mmr/penalty"]))
