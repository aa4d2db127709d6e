import pytest
from transformers import HfArgumentParser

from builders import make_args, tiny_model, token_dataset
from mmr_transformers import MMRTrainer, MMRTrainingArguments, register_alpha_schedule
from mmr_transformers.schedules import ALPHA_SCHEDULES, SCHEDULES_USING_END, alpha_at


def test_constant():
    assert [alpha_at("constant", s, 10, 1e-5) for s in (0, 5, 9)] == [1e-5] * 3


@pytest.mark.parametrize("total", [2, 7, 156_000])
def test_linear_hits_both_endpoints_exactly_and_is_linear_between(total):
    assert alpha_at("linear", 0, total, 1e-5, 1e-3) == 1e-5
    assert alpha_at("linear", total - 1, total, 1e-5, 1e-3) == 1e-3
    assert alpha_at("linear", total + 5, total, 1e-5, 1e-3) == 1e-3
    for step in range(0, total, max(1, total // 50)):  # on the line through both ends
        assert alpha_at("linear", step, total, 1e-5, 1e-3) == pytest.approx(1e-5 + (1e-3 - 1e-5) * step / (total - 1), rel=1e-12)


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown mmr_alpha_schedule 'cosine'; choose one of \['constant', 'linear'\]"):
        alpha_at("cosine", 0, 10, 1e-5)


def test_a_new_schedule_is_one_registered_function_the_settings_and_the_trainer_take(output_dir):
    @register_alpha_schedule("step_to_end", uses_end=True)
    def step_to_end(step, total_steps, start, end):
        return start if step < total_steps // 2 else end

    @register_alpha_schedule("doubling", uses_end=False)
    def doubling(step, total_steps, start, end):
        return start * 2**step

    try:
        (args,) = HfArgumentParser(MMRTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", output_dir, "--mmr_alpha", "1e-3", "--mmr-alpha-end", "1e-2", "--mmr_alpha_schedule", "step_to_end"])
        assert (args.mmr_alpha_schedule, args.mmr_alpha_end) == ("step_to_end", 1e-2)
        assert make_args(output_dir, mmr_alpha=0.0, mmr_alpha_end=1e-2, mmr_alpha_schedule="step_to_end").mmr_enabled
        with pytest.raises(ValueError, match=r"mmr_alpha_end set the end of the alpha schedule, which runs only with a "
                                             r"schedule that moves alpha to it \(linear, step_to_end\)"):
            make_args(output_dir, mmr_alpha_end=1e-2, mmr_alpha_schedule="doubling")
        for schedule, expected in (("step_to_end", [1e-3, 1e-3, 1e-2, 1e-2]), ("doubling", [1e-3, 2e-3, 4e-3, 8e-3])):
            end = {"mmr_alpha_end": 1e-2} if schedule == "step_to_end" else {}
            trainer = MMRTrainer(model=tiny_model("bert"), train_dataset=token_dataset(16), args=make_args(
                output_dir, mmr_alpha=1e-3, mmr_alpha_schedule=schedule, max_steps=4, **end))
            trainer.train()
            assert [h["mmr/alpha"] for h in trainer.state.log_history if "loss" in h] == pytest.approx(expected, rel=1e-12)
        register_alpha_schedule("step_to_end", uses_end=False)(step_to_end)  # replaced: mmr_alpha_end now refused
        with pytest.raises(ValueError, match=r"mmr_alpha_end set the end of the alpha schedule"):
            make_args(output_dir, mmr_alpha_end=1e-2, mmr_alpha_schedule="step_to_end")
    finally:
        for name in ("step_to_end", "doubling"):
            ALPHA_SCHEDULES.pop(name)
            SCHEDULES_USING_END.discard(name)
