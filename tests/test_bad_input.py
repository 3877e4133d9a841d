"""Every user mistake: one clear line naming the file/row/key, exit code 2, no traceback."""
import pytest

SFT_YAML = """task: sft
model:
  name_or_path: smollm2-135m-instruct
data:
  train_path: {data}
train:
  preset: fast
  max_steps: 1
  output_dir: {out}
"""


@pytest.fixture
def write(tmp_path):
    def _write(name, content, binary=False):
        path = tmp_path / name
        path.write_bytes(content) if binary else path.write_text(content, encoding="utf-8")
        return path
    return _write


def run_train(cli, tmp_path, write, data_content=None, yaml_text=None, extra=(), data_name="d.csv", binary=False):
    data = write(data_name, data_content, binary) if data_content is not None else tmp_path / "missing.csv"
    cfg = write("c.yaml", (yaml_text or SFT_YAML).format(data=data, out=tmp_path / "run"))
    return cli("train", cfg, *extra)


def assert_clean_error(code, output, *needles):
    assert code == 2, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, (needle, output)


def test_missing_column(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "questio,answer\nq,a\n")
    assert_clean_error(code, out, "d.csv", "missing column `question`", "did you mean `questio`")


def test_unknown_mapped_column(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "Q,A\nq,a\n", extra=("--set", "data.columns.question=Qx",
                                                                       "--set", "data.columns.answer=A"))
    assert_clean_error(code, out, "column `Qx`", "did you mean `Q`")


def test_empty_file(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "")
    assert_clean_error(code, out, "d.csv", "empty")


def test_undecodable_bytes(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, b"question,answer\nok,fine\ncaf\xe9 x,y\n", binary=True)
    assert_clean_error(code, out, "d.csv", "cannot decode line 3")


def test_all_rows_empty(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "question,answer\n ,a\nq, \n")
    assert_clean_error(code, out, "no usable rows", "empty: 2")


def test_unknown_config_key_with_did_you_mean(cli, tmp_path, write):
    yaml_text = SFT_YAML.replace("  preset: fast", "  preset: fast\n  epoch: 2")
    code, out, _ = run_train(cli, tmp_path, write, "question,answer\nq,a\n", yaml_text=yaml_text)
    assert_clean_error(code, out, "unknown key `train.epoch`", "did you mean `epochs`")


def test_bad_set_option(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "question,answer\nq,a\n", extra=("--set", "lora.rank=4"))
    assert_clean_error(code, out, "unknown key `lora.rank`")


def test_unknown_model_path(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "question,answer\nq,a\n", extra=("--model", "./no/such/model"))
    assert_clean_error(code, out, "model `./no/such/model` not found")


def test_model_task_mismatch_encoder_for_generation(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "question,answer\nq,a\n", extra=("--model", "all-minilm-l6-v2"))
    assert_clean_error(code, out, "all-minilm-l6-v2", "cannot serve as a decoder")


def test_missing_data_file_and_config_file(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, None)
    assert_clean_error(code, out, "data file not found", "missing.csv")
    code, out, _ = cli("train", tmp_path / "nope.yaml")
    assert_clean_error(code, out, "config file not found")


def test_quantization_without_cuda(cli, tmp_path, write, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU host
    code, out, _ = run_train(cli, tmp_path, write, "question,answer\nq,a\n", extra=("--set", "model.load_in_4bit=true"))
    assert_clean_error(code, out, "needs a CUDA GPU")


def test_resume_without_checkpoint(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "question,answer\nq,a\n", extra=("--resume",))
    assert_clean_error(code, out, "--resume", "run", "does not exist")
    # A run that stopped before its first checkpoint: nothing to resume, and it says how to start again.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(SFT_YAML.format(data=tmp_path / "d.csv", out=tmp_path / "run"))
    (tmp_path / "run" / "checkpoints" / "checkpoint-1").mkdir(parents=True)  # torn while saving
    code, out, _ = cli("train", tmp_path / "c.yaml", "--resume")
    assert_clean_error(code, out, "--resume", "no complete checkpoint", "without --resume")


def test_unknown_category_filter(cli, tmp_path, write):
    code, out, _ = run_train(cli, tmp_path, write, "question,answer,category\nq,a,law\nq2,a2,tax\n",
                             extra=("--categories", "laww"))
    assert_clean_error(code, out, "no rows with category `laww`", "did you mean `law`")


def test_data_stats_on_bad_file(cli, tmp_path, write):
    code, out, _ = cli("data", "stats", write("x.parquet", b"not parquet", True))
    assert_clean_error(code, out, "x.parquet", "not a readable Parquet file")
