"""A corpus of user mistakes, one parametrized test: data files, configs, run directories, predict / ensemble /
export / submission inputs, environment variables.

Every case must give: an exit code != 0, exactly one `error:` line that names the file / row / key, no
traceback, and no file changed, added or removed (the case's folder and the shared runs are hashed before
and after). `test_corpus_counts` reports the totals: cases tried, clean errors, tracebacks, silent wrong
behaviours (exit 0 on a mistake).

The CLI runs in-process (typer's CliRunner), so a traceback shows up as an exception that is not SystemExit.
The shared runs are tiny random Llamas (SmolLM2's real tokenizer) trained for two steps.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml

import tunelab
from tunelab.config import build_config
from tunelab.resources import resource_path

QA = resource_path("qa_en_instructions.csv")
RESULTS: dict[str, str] = {}  # case id -> "clean" | "traceback" | "silent" | "unclear" | "files changed"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm_tokenizer) -> dict[str, Path]:
    """Finished runs the cases use: sft, classify, preference (tiny Llama), and a run dir without final/."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("corpus-runs")
    torch.manual_seed(0)
    tiny = root / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(smollm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=smollm_tokenizer.pad_token_id,
        bos_token_id=smollm_tokenizer.bos_token_id, eos_token_id=smollm_tokenizer.eos_token_id)).save_pretrained(tiny)
    smollm_tokenizer.save_pretrained(tiny)

    rng = np.random.default_rng(0)
    words = ["card", "loan", "money", "bank", "transfer", "balance", "fee", "account"]
    pd.DataFrame([{"text": " ".join(rng.choice(words, 6)), "label": ["lost_card", "loan", "fees"][i % 3]}
                  for i in range(24)]).to_csv(root / "cls.csv", index=False)
    pd.DataFrame([{"id": i, "prompt": f"question {i}?", "response_a": "short", "response_b": "longer " * (i % 4 + 1),
                   "winner_model_a": int(i % 3 == 0), "winner_model_b": int(i % 3 == 1), "winner_tie": int(i % 3 == 2)}
                  for i in range(24)]).to_csv(root / "pref.csv", index=False)
    out = {}
    for name, task, data in (("sft", "sft", QA), ("classify", "classify", root / "cls.csv"),
                             ("preference", "preference", root / "pref.csv")):
        cfg = build_config({"task": {"name": task}, "model": {"name_or_path": str(tiny), "dtype": "float32"},
                            "data": {"train_path": str(data), "max_rows": 40, "eval_fraction": 0.25, "stratify_by": None},
                            "lora": {"r": 4, "alpha": 8},
                            "train": {"preset": "fast", "max_steps": 2, "batch_size": 4, "max_length": 64,
                                      "output_dir": str(root / name), "estimate_steps": 0},
                            "generation": {"max_new_tokens": 2}})
        out[name] = tunelab.train(cfg, echo=lambda s: None).run_dir
    nofinal = root / "nofinal"
    nofinal.mkdir()
    (nofinal / "config.yaml").write_text((out["sft"] / "config.yaml").read_text())
    out["nofinal"] = nofinal
    out["tiny"] = tiny
    out["cls_csv"], out["pref_csv"] = root / "cls.csv", root / "pref.csv"
    out["root"] = root
    return out


@dataclass
class Ctx:
    tmp: Path
    runs: dict

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
        return path

    def sft_yaml(self, data_file: Path | str | None = None, name: str = "c.yaml", **sections) -> Path:
        raw = {"task": "sft", "model": {"name_or_path": str(self.runs["tiny"])},
               "data": {"train_path": str(data_file if data_file is not None else QA), "max_rows": 20},
               "train": {"preset": "fast", "max_steps": 1, "max_length": 64, "output_dir": str(self.tmp / "run")}}
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
        return self.write(name, yaml.safe_dump(raw))

    def train_data(self, name: str, content: str | bytes) -> list:
        """`train` on a config whose data file is `name` with `content`."""
        return ["train", self.sft_yaml(self.write(name, content))]


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], list]
    needles: tuple[str, ...]
    env: dict = field(default_factory=dict)


def _q(ctx: Ctx, frame: dict, name: str = "q.csv") -> Path:
    path = ctx.tmp / name
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


CASES = [
    # -- data files ---------------------------------------------------------------------------------------
    Case("csv-missing-column", lambda c: c.train_data("d.csv", "questio,answer\nq,a\n"),
         ("d.csv", "missing column `question`")),
    Case("csv-empty-file", lambda c: c.train_data("d.csv", ""), ("d.csv", "empty")),
    Case("csv-header-only", lambda c: c.train_data("d.csv", "question,answer\n"), ("d.csv",)),
    Case("csv-broken-encoding", lambda c: c.train_data("d.csv", b"question,answer\nok,fine\ncaf\xe9 x,y\n"),
         ("d.csv", "line 3")),
    Case("csv-all-rows-blank", lambda c: c.train_data("d.csv", "question,answer\n ,a\nq, \n"), ("no usable rows",)),
    Case("csv-ragged-row", lambda c: c.train_data("d.csv", 'question,answer\nq,a\n"unclosed,quote\nx,y,z,w\n'),
         ("d.csv",)),
    Case("csv-binary-garbage", lambda c: c.train_data("d.csv", bytes(range(256)) * 4), ("d.csv",)),
    Case("jsonl-non-object-lines", lambda c: c.train_data("d.jsonl", '{"question": "q", "answer": "a"}\n[1, 2]\n"text"\n'),
         ("d.jsonl", "line 2")),
    Case("jsonl-invalid-json", lambda c: c.train_data("d.jsonl", '{"question": "q", "answer": "a"}\n{"question": \n'),
         ("d.jsonl", "line 2")),
    Case("json-not-a-list", lambda c: c.train_data("d.json", '"just a string"'), ("d.json",)),
    Case("jsonl-gz-corrupt", lambda c: c.train_data("d.jsonl.gz", gzip.compress(b'{"question": "q"}\n')[:-12]),
         ("d.jsonl.gz",)),
    Case("parquet-garbage", lambda c: c.train_data("d.parquet", b"not parquet at all"), ("d.parquet", "Parquet")),
    Case("unknown-extension", lambda c: c.train_data("d.xlsx", "question,answer\nq,a\n"), ("d.xlsx",)),
    Case("data-path-is-folder", lambda c: ["train", c.sft_yaml((c.tmp / "folder").mkdir() or c.tmp / "folder")],
         ("folder",)),
    Case("data-file-missing", lambda c: ["train", c.sft_yaml(c.tmp / "missing.csv")], ("missing.csv", "not found")),
    Case("eval-path-missing", lambda c: ["train", c.sft_yaml(data={"eval_path": str(c.tmp / "ev.csv")})], ("ev.csv",)),
    Case("classify-label-column-missing",
         lambda c: ["train", c.sft_yaml(task={"name": "classify"}, data={"train_path": str(c.runs["cls_csv"]),
                                                                          "columns": {"label": "category"}})],
         ("category",)),
    Case("classify-unknown-eval-label",
         lambda c: ["train", c.sft_yaml(task={"name": "classify"}, data={
             "train_path": str(c.runs["cls_csv"]),
             "eval_path": str(_q(c, {"text": ["bank fee", "card"], "label": ["fees", "mortgage"]}, "ev.csv"))})],
         ("mortgage",)),
    Case("preference-bad-winner-columns",
         lambda c: ["train", c.sft_yaml(task={"name": "preference"}, data={"train_path": str(_q(c, {
             "id": [1, 2], "prompt": ["p", "p"], "response_a": ["a", "a"], "response_b": ["b", "b"],
             "winner_model_a": [1, 1], "winner_model_b": [1, 0], "winner_tie": [0, 0]}, "pref.csv"))})],
         ("row 1", "winner_model_a")),
    # -- configs ------------------------------------------------------------------------------------------
    Case("yaml-python-object-tag",
         lambda c: ["train", c.write("c.yaml", "task: !!python/object/apply:os.system ['touch PWNED']\n")],
         ("c.yaml", "!!python/object/apply:os.system", "not allowed")),
    Case("yaml-python-name-tag", lambda c: ["train", c.write("c.yaml", "task: sft\nmodel: !!python/name:os.system\n")],
         ("c.yaml", "not allowed")),
    Case("yaml-syntax-tab", lambda c: ["train", c.write("c.yaml", "task: sft\ntrain:\n\tepochs: 2\n")],
         ("c.yaml", "line 3")),
    Case("yaml-top-level-list", lambda c: ["train", c.write("c.yaml", "- task\n- sft\n")], ("c.yaml", "mapping")),
    Case("yaml-empty", lambda c: ["train", c.write("c.yaml", "# nothing\n")], ("c.yaml", "empty")),
    Case("yaml-not-utf8", lambda c: ["train", c.write("c.yaml", "task: sft\n# caf\xe9\n".encode("latin-1"))],
         ("c.yaml", "UTF-8")),
    Case("config-file-missing", lambda c: ["train", c.tmp / "nope.yaml"], ("nope.yaml", "not found")),
    Case("config-is-a-folder", lambda c: ["train", c.tmp], ("is a folder",)),
    Case("config-unknown-key", lambda c: ["train", c.sft_yaml(train={"epoch": 2})], ("train.epoch", "epochs")),
    Case("config-wrong-type", lambda c: ["train", c.sft_yaml(train={"batch_size": "eight"})], ("train.batch_size",)),
    Case("config-negative-steps", lambda c: ["train", c.sft_yaml(train={"max_steps": -3})], ("train.max_steps",)),
    Case("config-section-not-mapping", lambda c: ["train", c.sft_yaml(lora=5)], ("lora",)),
    Case("unknown-task", lambda c: ["train", c.sft_yaml(task="sftt")], ("sftt",)),
    Case("unknown-preset", lambda c: ["train", c.sft_yaml(train={"preset": "turbo"})], ("turbo", "preset")),
    Case("unknown-template", lambda c: ["train", c.sft_yaml(task={"name": "classify", "template": "fancy"},
                                                            data={"train_path": str(c.runs["cls_csv"])})],
         ("fancy",)),
    Case("set-without-equals", lambda c: ["train", c.sft_yaml(), "--set", "lora.r"], ("--set", "key=value")),
    Case("set-unknown-key", lambda c: ["train", c.sft_yaml(), "--set", "lora.rank=4"], ("lora.rank",)),
    Case("set-garbage-value", lambda c: ["train", c.sft_yaml(), "--set", "train.epochs=[[["], ("train.epochs",)),
    Case("set-section-as-value", lambda c: ["train", c.sft_yaml(), "--set", "train=3"], ("train",)),
    Case("cli-option-wrong-type", lambda c: ["train", c.sft_yaml(), "--epochs", "many"], ("epochs",)),
    Case("model-task-mismatch-encoder-for-sft", lambda c: ["train", c.sft_yaml(), "--model", "all-minilm-l6-v2"],
         ("all-minilm-l6-v2", "decoder")),
    Case("model-path-missing", lambda c: ["train", c.sft_yaml(), "--model", "./no/such/model"], ("./no/such/model",)),
    Case("env-threads-not-a-number", lambda c: ["train", c.sft_yaml()], ("TUNELAB_THREADS", "abc"),
         env={"TUNELAB_THREADS": "abc"}),
    Case("env-threads-negative", lambda c: ["train", c.sft_yaml()], ("TUNELAB_THREADS",), env={"TUNELAB_THREADS": "-2"}),
    # -- run directories ----------------------------------------------------------------------------------
    Case("train-output-dir-is-a-file", lambda c: ["train", c.sft_yaml(), "--output-dir", c.write("taken", "x")],
         ("taken", "is a file")),
    Case("train-output-dir-dot-overwrite", lambda c: ["train", c.sft_yaml(), "--output-dir", ".", "--overwrite"],
         (".tunelab-run",)),
    Case("train-output-dir-user-folder", lambda c: ["train", c.sft_yaml(), "--output-dir",
                                                    c.write("proj/notes.txt", "mine").parent], ("proj", "not empty")),
    Case("train-resume-missing-run", lambda c: ["train", c.sft_yaml(), "--resume"], ("--resume", "run")),
    Case("train-resume-finished-run-other-dir", lambda c: ["train", "--resume", "--output-dir", c.tmp / "nothing"],
         ("nothing",)),
    Case("predict-missing-run-dir", lambda c: ["predict", c.tmp / "norun", "--data", QA, "--output", c.tmp / "o.csv"],
         ("norun", "not a tunelab run")),
    Case("predict-run-without-final", lambda c: ["predict", c.runs["nofinal"], "--data", QA, "--output", c.tmp / "o.csv"],
         ("nofinal", "final")),
    Case("predict-run-config-python-tag",
         lambda c: ["predict", _tampered_run(c, "task: !!python/object/apply:os.system ['touch PWNED']\n"),
                    "--data", QA, "--output", c.tmp / "o.csv"], ("config.yaml", "not allowed")),
    Case("predict-run-config-bad-key",
         lambda c: ["predict", _tampered_run(c, None), "--data", QA, "--output", c.tmp / "o.csv"],
         ("config.yaml", "bogus")),
    Case("predict-missing-question-column",
         lambda c: ["predict", c.runs["sft"], "--data", _q(c, {"text": ["hi"]}), "--output", c.tmp / "o.jsonl"],
         ("q.csv", "question")),
    Case("generate-missing-question-column",
         lambda c: ["generate", c.runs["sft"], "--data", _q(c, {"text": ["hi"]}), "--output", c.tmp / "o.jsonl"],
         ("q.csv", "question")),
    Case("predict-classify-missing-text-column",
         lambda c: ["predict", c.runs["classify"], "--data", _q(c, {"body": ["bank"]}), "--output", c.tmp / "o.csv"],
         ("text",)),
    Case("predict-data-missing", lambda c: ["predict", c.runs["sft"], "--data", c.tmp / "x.csv", "--output", c.tmp / "o"],
         ("x.csv",)),
    Case("predict-unknown-format",
         lambda c: ["predict", c.runs["classify"], "--data", c.runs["cls_csv"], "--output", c.tmp / "o.csv",
                    "--format", "xml"], ("xml",)),
    Case("predict-output-is-folder",
         lambda c: ["predict", c.runs["sft"], "--data", QA, "--output", (c.tmp / "outdir").mkdir() or c.tmp / "outdir"],
         ("outdir", "folder")),
    Case("predict-output-exists", lambda c: ["predict", c.runs["sft"], "--data", QA, "--output", c.write("o.csv", "x")],
         ("o.csv", "--overwrite")),
    Case("predict-output-is-the-input",
         lambda c: ["predict", c.runs["classify"], "--data", _q(c, {"text": ["bank"]}), "--output", c.tmp / "q.csv",
                    "--overwrite"], ("q.csv", "input")),
    Case("chat-on-a-classify-run", lambda c: ["chat", c.runs["classify"]], ("generative",)),
    Case("test-mode-on-a-classify-run", lambda c: ["test", c.runs["classify"]], ("test mode",)),
    # -- ensembles -----------------------------------------------------------------------------------------
    Case("ensemble-one-run", lambda c: ["ensemble", c.runs["classify"], "--data", c.runs["cls_csv"],
                                        "--output", c.tmp / "o.csv"], ("at least two",)),
    Case("ensemble-different-tasks",  # a file both runs can read, so the task check itself is reached
         lambda c: ["ensemble", c.runs["classify"], c.runs["preference"], "--data",
                    _q(c, {"id": [1], "text": ["bank fee"], "prompt": ["p"], "response_a": ["a"], "response_b": ["b"]}),
                    "--output", c.tmp / "o.csv"], ("preference", "differs", "classify")),
    Case("ensemble-generative-run", lambda c: ["ensemble", c.runs["classify"], c.runs["sft"], "--data",
                                               c.runs["cls_csv"], "--output", c.tmp / "o.csv"], ("sft",)),
    Case("ensemble-weights-garbage", lambda c: ["ensemble", c.runs["classify"], c.runs["classify"], "--data",
                                                c.runs["cls_csv"], "--output", c.tmp / "o.csv", "--weights", "a,b"],
         ("--weights",)),
    Case("ensemble-weights-count", lambda c: ["ensemble", c.runs["classify"], c.runs["classify"], "--data",
                                              c.runs["cls_csv"], "--output", c.tmp / "o.csv", "--weights", "1,2,3"],
         ("--weights", "3 values")),
    Case("ensemble-output-exists", lambda c: ["ensemble", c.runs["classify"], c.runs["classify"], "--data",
                                              c.runs["cls_csv"], "--output", c.write("o.csv", "x")], ("o.csv",)),
    # -- submissions ---------------------------------------------------------------------------------------
    Case("submission-wrong-columns", lambda c: ["submission", "check", c.write("s.csv", "id,a,b\n1,0.5,0.5\n"),
                                                "--format", "arena"], ("s.csv", "column")),
    Case("submission-probabilities-not-summing",
         lambda c: ["submission", "check", c.write("s.csv", "id,winner_model_a,winner_model_b,winner_tie\n1,0.9,0.9,0.1\n"),
                    "--format", "arena"], ("s.csv", "row 1")),
    Case("submission-duplicate-id",
         lambda c: ["submission", "check", c.write("s.csv", "id,winner_model_a,winner_model_b,winner_tie\n"
                                                            "1,0.2,0.3,0.5\n1,0.2,0.3,0.5\n"), "--format", "arena"],
         ("s.csv", "duplicate")),
    Case("submission-unknown-format", lambda c: ["submission", "check", c.write("s.csv", "id\n1\n"), "--format", "zip"],
         ("zip",)),
    Case("submission-file-missing", lambda c: ["submission", "check", c.tmp / "none.csv", "--format", "arena"],
         ("none.csv",)),
    Case("submission-test-without-id",
         lambda c: ["submission", "check", c.write("s.csv", "id,winner_model_a,winner_model_b,winner_tie\n1,0.2,0.3,0.5\n"),
                    "--format", "arena", "--test", c.write("t.csv", "key,prompt\n1,p\n")], ("t.csv", "id")),
    # -- export ---------------------------------------------------------------------------------------------
    Case("export-to-dot", lambda c: ["export", c.runs["sft"], "--offline-bundle", "."], ("current directory",)),
    Case("export-run-without-final", lambda c: ["export", c.runs["nofinal"], "--offline-bundle", c.tmp / "b"],
         ("nofinal", "final")),
    Case("export-over-a-user-folder", lambda c: ["export", c.runs["sft"], "--offline-bundle",
                                                 c.write("mine/data.csv", "a\n").parent, "--overwrite"],
         ("mine", "not a tunelab bundle")),
    Case("export-to-a-file", lambda c: ["export", c.runs["sft"], "--offline-bundle", c.write("b.zip", "x")],
         ("b.zip", "file")),
    # -- data commands ----------------------------------------------------------------------------------------
    Case("data-stats-garbage-parquet", lambda c: ["data", "stats", c.write("x.parquet", b"nope")], ("x.parquet",)),
    Case("data-check-bad-config", lambda c: ["data", "check", c.write("c.yaml", "task: nope\n")], ("nope",)),
]


def _tampered_run(ctx: Ctx, config_text: str | None) -> Path:
    """A copy of the finished sft run whose config.yaml was edited by hand (a tag, or an unknown key)."""
    import shutil

    run = ctx.tmp / "tampered"
    shutil.copytree(ctx.runs["sft"], run)
    text = config_text if config_text is not None else (run / "config.yaml").read_text() + "bogus: 1\n"
    (run / "config.yaml").write_text(text)
    return run


def _snapshot(*folders: Path) -> dict:
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.chdir(user)
    ctx = Ctx(user, runs)
    args = [str(a) for a in case.build(ctx)]
    before = _snapshot(user, runs["root"])
    result = CliRunner().invoke(app, args, env={"TUNELAB_THREADS": "1", **case.env})
    after = _snapshot(user, runs["root"])
    out = result.output
    traceback = result.exception is not None and not isinstance(result.exception, SystemExit)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    RESULTS[case.id] = ("traceback" if traceback or "Traceback" in out else "silent" if result.exit_code == 0
                        else "unclear" if len(errors) != 1 or not all(n in errors[0] for n in case.needles)
                        else "files changed" if after != before or (user / "run").exists() else "clean")
    assert not traceback and "Traceback" not in out, f"{case.id}: {result.exception!r}\n{out}"
    assert result.exit_code != 0, f"{case.id}: accepted silently\n{out}"
    assert len(errors) == 1, f"{case.id}: expected one error line\n{out}"
    for needle in case.needles:
        assert needle in errors[0], f"{case.id}: `{needle}` not in: {errors[0]}"
    assert after == before, f"{case.id}: files changed: {set(after.items()) ^ set(before.items())}"
    assert not (user / "PWNED").exists() and not Path("PWNED").exists()  # a YAML tag never runs code
    assert not (user / "run").exists()  # a failed run leaves no folder behind
    print(f"\n[{case.id}] exit {result.exit_code}: {errors[0]}")


def test_corpus_counts():
    """Runs after the corpus (same module): every case a clean error. With -s, prints the counts."""
    if len(RESULTS) < len(CASES):
        pytest.skip("the whole corpus did not run (selected with -k?)")
    kinds = ("clean", "traceback", "silent", "unclear", "files changed")
    counts = {kind: sum(1 for v in RESULTS.values() if v == kind) for kind in kinds}
    print(f"\nbad-input corpus: {len(RESULTS)} cases tried, {counts['clean']} clean errors, {counts['traceback']} "
          f"tracebacks, {counts['silent']} silent wrong behaviours, {counts['unclear']} unclear messages, "
          f"{counts['files changed']} with files changed or left behind")
    assert counts == {"clean": len(CASES), "traceback": 0, "silent": 0, "unclear": 0, "files changed": 0}, RESULTS
