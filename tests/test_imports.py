"""The pure core imports with torch alone; the Hugging Face adapter loads on first use of its names."""

import subprocess
import sys

from builders import REPO

CORE = ["margins", "selection", "schedules", "heads", "batching", "scoring", "sampler", "pruning", "settings",
        "diagnostics", "active_learning"]


def python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_the_core_imports_without_transformers_and_the_trainer_is_still_a_top_level_name():
    out = python(
        "import sys\n"
        + "".join(f"import mmr_transformers.{name}\n" for name in CORE)
        + "print(sorted(m for m in ('transformers', 'accelerate', 'datasets') if m in sys.modules))\n"
        "from mmr_transformers import MMRTrainer, MMRTrainingArguments\n"
        "print('transformers' in sys.modules, MMRTrainer.__module__, MMRTrainingArguments.__module__)\n"
    )
    assert out.splitlines() == ["[]", "True mmr_transformers.trainer mmr_transformers.training_args"]


def test_an_unknown_top_level_name_is_an_attribute_error():
    assert python("import mmr_transformers\ntry:\n    mmr_transformers.MMRTrainr\nexcept AttributeError as e:\n    print(e)") \
        == "module 'mmr_transformers' has no attribute 'MMRTrainr'"
