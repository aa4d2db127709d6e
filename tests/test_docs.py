"""Docs that cannot drift: every repository path, link and command that README.md, docs/*.md and the
benchmarks' docstrings name exists, every logged metric they name is one the trainer logs, and no doc points
at a file outside the repository (a SPEC or a STYLE.md)."""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest

from builders import REPO

DOCS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
DOCSTRINGS = sorted(os.path.relpath(p, REPO) for pattern in ("*.py", "*.sh")
                    for p in glob.glob(os.path.join(REPO, "benchmarks", pattern)))
READER_SCRIPTS = {"train.py"}  # "accelerate launch ... train.py": the reader's own script, not a repository file
TOP_FOLDERS = ("benchmarks", "scripts", "mmr_transformers", "docs", "glue_configs", "tests", ".ci")

# a path inside the repository: a top folder, then path characters; ``<name>`` stands for any one name
# (``glue_configs/<task>.json``). Not preceded by a path character, so ``../shared/data/...`` is left out.
REPO_PATH = re.compile(r"(?<![\w./<>-])((?:%s)/(?:[\w./<>*-]|\[[\w-]+\])*)" % "|".join(re.escape(f) for f in TOP_FOLDERS))
# a markdown link or image target: ``[text](target)``, ``![alt](target)``
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a command that runs a file: ``python x.py``, ``python3 x.py``, ``bash x.sh``, ``accelerate launch [flags] x.py``
COMMAND = re.compile(r"\b(?:python3?|bash|accelerate launch(?: --?[\w-]+(?: [\w.-]+)?)*) +([\w./-]+\.(?:py|sh))\b")
# a bare file name in backticks that a doc refers to as one of its neighbours, e.g. `RESULTS.md`
BARE_DOC = re.compile(r"`([\w-]+\.md)`")
METRIC = re.compile(r"`(mmr/\w+)`")


def text_of(name: str) -> str:
    """A doc's text; a benchmark's docstrings (module, classes, functions); a shell script's opening comments."""
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        text = f.read()
    if name.endswith(".py"):
        nodes = [n for n in ast.walk(ast.parse(text))
                 if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        return "\n".join(ast.get_docstring(n) or "" for n in nodes)
    if name.endswith(".sh"):
        lines = text.splitlines()[1:]  # after the shebang
        return "\n".join(line for line in lines[:next((i for i, l in enumerate(lines) if not l.startswith("#")), len(lines))])
    return text


def exists(path: str) -> bool:
    """The path exists; ``*``, ``[0-3]`` and a ``<name>`` part match as a glob does (at least one must exist); ``folder/module.NAME``
    names ``NAME`` in ``folder/module.py``."""
    pattern = re.sub(r"<[^>]*>", "*", path)
    if "*" in pattern or "[" in pattern:
        return bool(glob.glob(pattern))
    module, dot, attribute = path.rpartition(".")
    if not os.path.exists(path) and dot and attribute.isidentifier() and os.path.isfile(module + ".py"):
        with open(module + ".py", encoding="utf-8") as f:
            return re.search(rf"\b{attribute}\b", f.read()) is not None
    return os.path.exists(path)


def named_paths(name: str) -> list[tuple[str, str]]:
    """(what the doc wrote, the file it resolves to) for every repository path, relative link and command."""
    text, folder = text_of(name), os.path.dirname(os.path.join(REPO, name))
    found = [(m, os.path.join(REPO, m.rstrip(".:,;"))) for m in REPO_PATH.findall(text)]
    found += [(m, os.path.join(REPO, m)) for m in COMMAND.findall(text) if m not in READER_SCRIPTS]
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:|#", target):  # not a URL, not an anchor
            found.append((target, os.path.join(folder, target.split("#")[0])))
    for bare in BARE_DOC.findall(text):  # a neighbour of the doc or a file at the top of the repository
        found.append((bare, os.path.join(folder, bare) if os.path.exists(os.path.join(folder, bare))
                      else os.path.join(REPO, bare)))
    return found


@pytest.mark.parametrize("name", DOCS + DOCSTRINGS)
def test_every_path_link_and_command_a_doc_names_exists(name):
    found = named_paths(name)
    if name.endswith(".md"):  # every doc names files; a benchmark docstring may not (common.py)
        assert found, f"{name}: no path found: the extraction is broken"
    missing = [written for written, path in found if not exists(path)]
    assert not missing, f"{name} names files that do not exist: {missing}"


def test_the_extraction_sees_what_the_docs_name():
    """The checks above can fail: these paths, links and commands are really extracted (and resolved)."""
    readme = {written for written, _ in named_paths("README.md")}
    assert {"benchmarks/study.py", "benchmarks/collect_results.py", "mmr_transformers/recipes/regimes.py",
            "scripts/run_glue.py", "glue_configs/<task>.json", "glue_configs/mnli-mm.json", "docs/RESULTS.md",
            "benchmarks/gpu_check.sh"} <= readme
    assert not any(w.startswith(("shared/", "data/glue")) for w in readme)  # ../shared/... is data, not the repository
    results = dict(named_paths(os.path.join("docs", "RESULTS.md")))
    assert results["results/mms-vs-random.png"] == os.path.join(REPO, "docs", "results", "mms-vs-random.png")
    assert {"benchmarks/study.py", "benchmarks/collect_results.py", "docs/results/<study>/"} <= set(results)
    performance = {written for written, _ in named_paths(os.path.join("docs", "PERFORMANCE.md"))}
    assert {"benchmarks/time_to_accuracy.py", "benchmarks/common.py", "RESULTS.md",
            "results/time-to-accuracy/sst2/"} <= performance
    assert "benchmarks/collect_results.py" in {w for w, _ in named_paths(os.path.join("benchmarks", "collect_results.py"))}
    assert not exists(os.path.join(REPO, "scripts", "glue_study.py"))  # what a stale doc would name fails
    assert exists(os.path.join(REPO, "tests", "builders.ARCHITECTURES")) and exists(os.path.join(REPO, "glue_configs", "*.json"))
    assert not exists(os.path.join(REPO, "tests", "builders.NO_SUCH_NAME")) and not exists(os.path.join(REPO, "docs", "<x>.txt"))
    assert COMMAND.findall("accelerate launch --multi_gpu --num_processes 2 scripts/run_glue.py --task mrpc") == \
        ["scripts/run_glue.py"]
    assert COMMAND.findall("python run_glue.py --task rte; python3 benchmarks/x.py; bash gpu_check.sh run") == \
        ["run_glue.py", "benchmarks/x.py", "gpu_check.sh"]  # bare names too: relative to the repository root
    gpu_check = {written for written, _ in named_paths(os.path.join("benchmarks", "gpu_check.sh"))}
    assert "benchmarks/gpu_check.sh" in gpu_check


def test_every_logged_metric_a_doc_names_is_one_the_trainer_logs():
    source = "".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(REPO, "mmr_transformers", "*.py")))
    named = {m for name in DOCS for m in METRIC.findall(text_of(name))}
    assert {"mmr/penalty", "mmr/alpha", "mmr/cache_coverage"} <= named
    missing = sorted(m for m in named if f'"{m}"' not in source)
    assert not missing, f"docs name metrics the trainer does not log: {missing}"


@pytest.mark.parametrize("name", DOCS + DOCSTRINGS)
def test_no_doc_points_at_a_spec_or_style_file_outside_the_repository(name):
    text = text_of(name)
    assert not re.search(r"\bSPEC\b|STYLE\.md", text), f"{name} refers to a SPEC or STYLE.md outside the repository"
