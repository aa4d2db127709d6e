"""Train a tiny BERT with MMR + MMS selection; run by test_distributed.py under `accelerate launch`, and called in
the test process (``main(argv)``) for the single-process reference runs.

Each process writes ``selections-rank{R}.json`` (fresh selection: the rows it selected, step by step) and
``trained-rank{R}.json`` (the rows of every trained micro-batch, and the cached scores); the main process
saves the final model and the log history.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from transformers import HfArgumentParser  # noqa: E402

from builders import RecordingTrainer, tiny_model, token_dataset  # noqa: E402
from mmr_transformers import MMRTrainingArguments  # noqa: E402


def main(argv=None):
    (args,) = HfArgumentParser(MMRTrainingArguments).parse_args_into_dataclasses(args=argv)
    model = tiny_model("bert", dropout=False, initializer_range=1.0)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=token_dataset(64))
    trainer.train()
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, f"selections-rank{args.process_index}.json"), "w") as f:
        json.dump([{"step": r["step"], "selected": r["selected"]} for r in trainer.selections], f)
    with open(os.path.join(args.output_dir, f"trained-rank{args.process_index}.json"), "w") as f:
        cache = trainer._sampler.scores.tolist() if trainer._sampler is not None else None
        json.dump({"trained": trainer.trained, "cached_scores": cache}, f)
    if trainer.is_world_process_zero():
        trainer.save_model(os.path.join(args.output_dir, "final"))
        with open(os.path.join(args.output_dir, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f)
    # leave the process group before exiting: without it, gloo's threads sometimes abort the exit
    # ("terminate called without an active exception"), failing a run whose work was all done
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
