"""Bad or unusual GLUE input, found before training: how local files are quoted and checked row by row, what a
task name resolves to, and the messages for the mistakes a user can fix (empty files, undecodable bytes, missing
labels, zero sample caps, no network)."""

import os
import subprocess
import sys

import pytest

from builders import REPO, load_script
from mmr_transformers.recipes.glue import get_task, is_csv_quoted_tsv, load_local, read_split

run_glue = load_script("run_glue")

RTE_HF = ["sentence1", "sentence2", "label", "idx"]


def write_text(path, text, encoding="utf-8"):
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


def tsv(*lines):
    return "".join("\t".join(str(v) for v in line) + "\n" for line in lines)


def texts(data):
    return [(row["sentence1"], row["sentence2"], row["label"]) for row in data]


# ---- item 2: quoting of Hugging Face layout files, every row accounted for ----------------------------------


def test_a_verbatim_hf_tsv_keeps_every_row_and_every_quote(tmp_path):
    """20 rows written verbatim in the Hub's columns, with an opening quote that never closes, a leading quoted
    phrase and quotes inside: CSV quoting read 14 rows here and stripped the leading phrase's quotes."""
    rows = [(f"sentence {i} is plain .", f"hypothesis {i}", i % 2) for i in range(20)]
    rows[2] = ('"The foodservice pie business does not fit our strategy.', "It does not fit.", 1)
    rows[5] = ("Another plain premise.", "It closes here, later\"", 0)
    rows[8] = ('"Quotes" open and close this one.', "Quotes do.", 0)
    rows[11] = ('He said "no deal".', '"No deal" was made.', 1)
    rows[15] = ('"a whole quoted field"', "is verbatim too, as the file is", 0)
    write_text(tmp_path / "train.tsv", tsv(RTE_HF, *[(a, b, y, i) for i, (a, b, y) in enumerate(rows)]))
    assert texts(read_split(get_task("rte"), str(tmp_path / "train.tsv"))) == rows


def test_a_csv_quoted_hf_tsv_loses_its_quoting_and_keeps_tabs_inside_quoted_fields(tmp_path):
    """Lines of the real RTE export (../shared/data/glue/RTE/train.tsv, written by a CSV writer), and a tab."""
    raw = (
        "sentence1\tsentence2\tlabel\tidx\n"
        '"Valero Energy Corp., on Monday, said it found ""extensive"" additional damage at its refinery."\t'
        "Valero Energy Corp. produces 250,000 barrels per day.\t0\t12\n"
        '"Lin Piao, after all, was the creator of Mao\'s ""Little Red Book"" of quotations."\t'
        '"Lin Piao wrote the ""Little Red Book""."\t0\t26\n'
        "No Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\t1\t0\n"
        '"a tab\there"\t"""quoted"" at the start"\t1\t3\n'
    )
    write_text(tmp_path / "train.tsv", raw)
    assert texts(read_split(get_task("rte"), str(tmp_path / "train.tsv"))) == [
        ('Valero Energy Corp., on Monday, said it found "extensive" additional damage at its refinery.',
         "Valero Energy Corp. produces 250,000 barrels per day.", 0),
        ('Lin Piao, after all, was the creator of Mao\'s "Little Red Book" of quotations.',
         'Lin Piao wrote the "Little Red Book".', 0),
        ("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1),
        ("a tab\there", '"quoted" at the start', 1),
    ]


def test_the_quoting_rule_needs_every_quote_inside_a_quoted_field():
    csv_lines = ['"say ""hi"""\tplain\t1\t0\n', 'x\t"a\tb"\t0\t1\n']
    assert is_csv_quoted_tsv(csv_lines)
    assert not is_csv_quoted_tsv([*csv_lines, 'he said "no"\tb\t0\t2\n'])  # one unquoted '"' anywhere: verbatim
    assert not is_csv_quoted_tsv(['"ends""\tb\t0\t0\n'])  # a single '"' inside
    assert not is_csv_quoted_tsv(['"opens\tb\t0\t0\n', 'c\tcloses"\t1\t1\n'])  # a quoted field may not span lines
    assert not is_csv_quoted_tsv(["no quotes at all\tb\t0\t0\n"])  # nothing to unquote


def test_one_verbatim_quote_makes_the_whole_tsv_verbatim(tmp_path):
    write_text(tmp_path / "train.tsv", tsv(RTE_HF, ['"say ""hi"""', "b", 1, 0], ['he said "no"', "c", 0, 1]))
    assert texts(read_split(get_task("rte"), str(tmp_path / "train.tsv"))) == [
        ('"say ""hi"""', "b", 1), ('he said "no"', "c", 0)]


def test_a_csv_export_in_the_official_columns_is_read_with_csv_quoting(tmp_path):
    """An SST-2 export has the official columns (sentence, label) plus idx; as a .csv its commas are quoted."""
    write_text(tmp_path / "train.csv", 'sentence,label,idx\n"funny , and ""smart""",1,0\nplain,0,1\n')
    data = read_split(get_task("sst2"), str(tmp_path / "train.csv"))
    assert list(zip(data["sentence"], data["label"])) == [('funny , and "smart"', 1), ("plain", 0)]


# ---- item 14: task aliases and capitalised names find their settings file -----------------------------------


@pytest.mark.parametrize("task, alpha", [("sst-2", 1e-5), ("SST-2", 1e-5), ("SST2", 1e-5), ("RTE", 1e-5),
                                         ("mnli-m", 1e-5), ("MNLI-MM", 1e-6), ("mnli-mm", 1e-6), ("sts-b", 0.0)])
def test_aliases_and_capitalised_names_use_the_tasks_settings_file(task, alpha, tmp_path):
    glue_args, training = run_glue.parse_args(["--task", task, "--output_dir", str(tmp_path), "--use_cpu"])
    assert glue_args.task == task
    assert training.mmr_alpha == alpha
    # values of glue_configs/*.json, not the defaults (lr 5e-5, eval batch 8)
    assert (training.learning_rate, training.per_device_eval_batch_size, training.num_train_epochs) == (2e-5, 128, 3)
    assert glue_args.hidden_dropout_prob is None  # the model's own (BERT's 0.1 is the thesis' dropout)


def test_an_unknown_task_is_refused_by_the_choices(capsys, tmp_path):
    with pytest.raises(SystemExit):
        run_glue.parse_args(["--task", "imdb", "--output_dir", str(tmp_path), "--use_cpu"])
    assert "argument --task: invalid choice: 'imdb'" in capsys.readouterr().err


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"--config_file .*nope.json: no such file; pass a JSON settings file"):
        run_glue.parse_args(["--task", "rte", "--config_file", str(tmp_path / "nope.json"), "--output_dir", str(tmp_path)])


def test_an_unknown_flag_is_named_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown command-line arguments \['--overwrite_output_dir'\]: not flags of "
                                         r"this script \(run it with --help"):
        run_glue.parse_args(["--task", "rte", "--output_dir", str(tmp_path), "--overwrite_output_dir"])


# ---- items 2 and 15: files and flags refused before training, naming the file, row or flag ------------------


# Files refused before training, each naming the file (and line) and the fix: (task, file name, content, message).
STSB = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
REFUSED = {
    # item 2: an unbalanced quote in a csv swallows the rows up to the next quote
    "csv-quote-swallows-lines": ("rte", "train.csv", 'sentence1,sentence2,label,idx\nok,fine,1,0\n"opens here,b,0,1\n'
                                 'c,d,1,2\ne,closes here",1,3\nf,g,0,4\n',
                                 r"train.csv: 3 data rows parsed from 5 data lines; they part at line 3, whose row runs "
                                 r"on to line 5 .*fix the quoting on line 3"),
    "csv-bad-quote": ("rte", "dev.csv", 'sentence1,sentence2,label,idx\na,b,0,0\n"quoted" then text,c,1,1\n',
                      r"dev.csv, line 3: not valid CSV"),
    "tab-in-a-text": ("sst2", "train.tsv", tsv(["sentence", "label"], ["fine .", 1], ["a tab\tinside .", 0]),
                      r"train.tsv, line 3: 3 fields where the header has 2 \(\['sentence', 'label'\]\)"),
    # item 15
    "header-only": ("sst2", "train.tsv", tsv(["sentence", "label"]), r"train.tsv has a header but no data rows"),
    "empty": ("sst2", "dev.tsv", "\n", r"dev.tsv is empty"),
    "not-utf8": ("sst2", "train.tsv", b"sentence\tlabel\nfine .\t1\ncaf\xe9 au lait\t0\n",
                 r"train.tsv, line 3, column 4: byte 0xe9 is not UTF-8.*iconv"),
    "empty-label": ("rte", "train.tsv", tsv(RTE_HF, ["a", "b", 1, 0], ["c", "d", "", 1]),
                    r"train.tsv, line 3: the label \(column 'label'\) is empty"),
    "test-split-label": ("sst2", "train.tsv", tsv(["sentence", "label"], ["fine .", -1], ["ok .", 1]),
                         r"line 2: the label -1 is outside 0..1 for SST2 \(-1 marks an unlabelled test row"),
    "label-no-class": ("sst2", "train.tsv", tsv(["sentence", "label"], ["fine .", "pos"], ["ok .", 1]),
                       r"line 2: the label 'pos' \(column 'label'\) is not a class id 0..1"),
    "score-no-number": ("stsb", "train.tsv", tsv(STSB, [0, "g", "f", "y", 0, "s", "s", "a", "b", "n/a"]),
                        r"line 2: the score 'n/a' \(column 'score'\) is not a number"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_bad_file_is_refused_naming_the_file_line_and_fix(case, tmp_path):
    task, name, content, message = REFUSED[case]
    (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        read_split(get_task(task), str(tmp_path / name))


def sst2_dir(tmp_path, train_rows=(("good fun .", 1), ("dull .", 0))):
    data = tmp_path / "sst2"
    os.makedirs(data, exist_ok=True)
    write_text(data / "train.tsv", tsv(["sentence", "label"], *train_rows))
    write_text(data / "dev.tsv", tsv(["sentence", "label"], ["great .", 1]))
    return str(data)


def main_argv(tmp_path, *extra):
    return ["--task", "sst2", "--data_dir", sst2_dir(tmp_path), "--model_name_or_path", str(tmp_path / "no-model"),
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "--report_to", "none", *extra]


def test_a_header_only_train_file_stops_the_run_before_the_model_loads(tmp_path):
    argv = main_argv(tmp_path)
    write_text(tmp_path / "sst2" / "train.tsv", tsv(["sentence", "label"]))
    with pytest.raises(ValueError, match=r"sst2/train.tsv has a header but no data rows"):
        run_glue.main(argv)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flag, what", [("--max_train_samples", "train on"), ("--max_eval_samples", "evaluate on")])
def test_a_zero_sample_cap_is_refused_naming_the_flag(tmp_path, flag, what):
    with pytest.raises(SystemExit, match=rf"{flag} 0: there would be no rows to {what}. Give at least 1"):
        run_glue.main(main_argv(tmp_path, flag, "0"))
    assert not os.path.exists(tmp_path / "out")


def test_local_files_load_in_full_with_a_positive_cap(tmp_path):
    data = load_local(get_task("sst2"), sst2_dir(tmp_path))
    assert [len(data["train"]), len(data["validation"])] == [2, 1]
    assert data["train"]["label"] == [1, 0]


# ---- item 16: no network, said plainly ------------------------------------------------------------------------


def test_offline_without_data_dir_says_how_to_run_from_local_files(tmp_path):
    """The README's main command with the Hub unreachable (HF_HUB_OFFLINE=1: nothing is sent), as a real process:
    it must end with the advice, not a traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": REPO,
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "run_glue.py"), "--task", "rte",
                             "--mmr-alpha", "1e-5", "--output_dir", str(tmp_path / "out"), "--use_cpu"],
                            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Could not load GLUE RTE from the Hugging Face Hub (nyu-mll/glue)" in result.stderr
    assert "pass --data_dir with the task's local GLUE files (a folder holding train.tsv and dev.tsv)" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr and "--model_name_or_path" in result.stderr
    assert "Traceback" not in result.stderr


def test_offline_with_a_hub_model_id_says_to_use_a_local_model(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: this process never reaches the network
    argv = main_argv(tmp_path)
    argv[argv.index("--model_name_or_path") + 1] = "no-such-org/no-such-model"
    with pytest.raises(SystemExit, match=r"(?s)Could not load the model 'no-such-org/no-such-model' \(--model_name_or_path\)"
                                         r".*Pass a local --model_name_or_path.*HF_HUB_OFFLINE=1") as raised:
        run_glue.main(argv)
    assert "couldn't connect to 'https://huggingface.co'" in str(raised.value)  # the cause is kept


def test_hidden_dropout_reaches_each_familys_own_dropout_or_is_refused_where_there_is_none():
    import transformers
    from builders import tiny_model
    from mmr_transformers.recipes.text import set_hidden_dropout

    applied = {  # the modules BERT's hidden_dropout_prob drives, in each family
        "bert": lambda m: [m.bert.embeddings.dropout, m.bert.encoder.layer[0].output.dropout, m.dropout],
        "distilbert": lambda m: [m.distilbert.embeddings.dropout, m.distilbert.transformer.layer[0].ffn.dropout],
        "gpt2": lambda m: [m.transformer.drop, m.transformer.h[0].mlp.dropout, m.transformer.h[0].attn.resid_dropout],
    }
    for arch, modules in applied.items():
        config = tiny_model(arch).config
        set_hidden_dropout(config, 0.37)
        model = getattr(transformers, type(tiny_model(arch)).__name__)(config)
        assert [module.p for module in modules(model)] == [0.37] * len(modules(model)), arch
    config = tiny_model("llama").config
    set_hidden_dropout(config, 0.0)  # it has none: 0 is what it does
    with pytest.raises(SystemExit, match=r"--hidden_dropout_prob 0.1: a LlamaConfig has no field for BERT's hidden "
                                         r"dropout \(its dropout settings: \{'attention_dropout': 0.0\}\)"):
        set_hidden_dropout(config, 0.1)
    modern = transformers.ModernBertConfig(mlp_dropout=0.1)  # its hidden dropout split into its own fields
    with pytest.raises(SystemExit, match=r"--hidden_dropout_prob 0.0: a ModernBertConfig has no field for BERT's"):
        set_hidden_dropout(modern, 0.0)  # 0 would not be what it uses


def test_a_max_length_beyond_the_models_positions_is_refused(tmp_path):
    import transformers
    from builders import save_tiny_checkpoint
    from mmr_transformers.recipes.text import TextModelArguments, load_sequence_classifier

    path = save_tiny_checkpoint(tmp_path, ["a", "b"])  # 64 positions, a tokenizer without a stated maximum
    tokenizer, _ = load_sequence_classifier(TextModelArguments(model_name_or_path=path, max_seq_length=64), "-")
    long_text = " ".join(["a"] * 80)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    with pytest.raises(RuntimeError, match="must match the size"):  # what training would meet at the first long text
        model(**tokenizer(long_text, truncation=True, max_length=65, return_tensors="pt"))
    with pytest.raises(SystemExit, match=r"--max_seq_length 65: the model takes at most 64 tokens \(its config's "
                                         r"max_position_embeddings 64\)"):
        load_sequence_classifier(TextModelArguments(model_name_or_path=path, max_seq_length=65), "-")


def test_a_roberta_like_table_holds_two_tokens_fewer_than_its_rows(tmp_path):
    import transformers
    from builders import save_tiny_checkpoint
    from mmr_transformers.recipes.text import TextModelArguments, load_sequence_classifier

    path = save_tiny_checkpoint(tmp_path, ["a", "b"], arch="roberta")  # 64 rows, padding_idx 1: tokens number from 2
    tokenizer, _ = load_sequence_classifier(TextModelArguments(model_name_or_path=path, max_seq_length=62), "-")
    assert tokenizer.model_max_length > 1_000_000  # no stated maximum: the table alone limits
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    long_text = " ".join(["a"] * 80)
    model(**tokenizer(long_text, truncation=True, max_length=62, return_tensors="pt"))  # 62 tokens fit
    with pytest.raises(IndexError, match="index out of range"):  # what training would meet at the first long text
        model(**tokenizer(long_text, truncation=True, max_length=63, return_tensors="pt"))
    with pytest.raises(SystemExit, match=r"--max_seq_length 63: the model takes at most 62 tokens \(its config's "
                                         r"max_position_embeddings 64 less the 2 positions its embeddings number "
                                         r"before the first token, that is 62\)"):
        load_sequence_classifier(TextModelArguments(model_name_or_path=path, max_seq_length=63), "-")


def test_the_length_check_reads_no_limit_from_xlnets_unset_positions_or_deberta_v3s_relative_ones():
    import transformers
    from mmr_transformers.recipes.text import check_max_length

    unbounded = type("Tokenizer", (), {"model_max_length": int(1e30)})()
    check_max_length(4096, unbounded, transformers.XLNetConfig())  # max_position_embeddings -1: no table
    check_max_length(1024, unbounded, transformers.DebertaV2Config(position_biased_input=False))
    with pytest.raises(SystemExit, match="--max_seq_length 1024: the model takes at most 512 tokens"):
        check_max_length(1024, unbounded, transformers.DebertaV2Config())  # DeBERTa-v2 adds absolute positions
