import json

import pandas as pd
import pytest

from tunelab.data.readers import read_table
from tunelab.data.split import train_eval_split
from tunelab.data.validate import DataReport, apply_filters, clean, map_columns, require_fields
from tunelab.errors import UserError

KO = "질문,답변,분류\n안녕하세요,반갑습니다,일상\n사랑해,고마워요,사랑\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp949", "euc-kr"])
def test_reads_korean_csv_in_any_common_encoding(tmp_path, encoding):
    path = tmp_path / "ko.csv"
    path.write_bytes(KO.encode(encoding))
    frame = read_table(path)
    assert list(frame.columns) == ["질문", "답변", "분류"]  # no BOM left in the first header
    assert frame.iloc[1].tolist() == ["사랑해", "고마워요", "사랑"]


@pytest.mark.parametrize("name,content", [
    ("d.jsonl", '{"question": "q1", "answer": "a1"}\n\n{"question": "q2", "answer": "a2"}\n'),
    ("d.json", '[{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]'),
    ("d.tsv", "question\tanswer\nq1\ta1\nq2\ta2\n"),
])
def test_reads_json_jsonl_tsv(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_table(path)[["question", "answer"]].values.tolist() == [["q1", "a1"], ["q2", "a2"]]


def test_reads_parquet_and_gzip(tmp_path):
    pd.DataFrame({"question": ["q"], "answer": ["a"]}).to_parquet(tmp_path / "d.parquet")
    assert read_table(tmp_path / "d.parquet").iloc[0]["answer"] == "a"
    import gzip
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b"question,answer\nq,a\n"))
    assert read_table(tmp_path / "d.csv.gz").iloc[0]["question"] == "q"


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b"question,answer\n", "no data rows"),
    (b"question,answer\ncaf\xe9 ok,x\n", "cannot decode line 2"),  # one accented letter: too little to guess from
    (b"question,answer\n" + bytes(range(0x80, 0x100)) + b",x\n", "cannot decode line 2"),
])
def test_bad_files_are_user_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        read_table(path)
    assert "bad.csv" in str(err.value)


def test_missing_file_and_bad_json_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n{broken\n')
    with pytest.raises(UserError, match="line 2"):
        read_table(tmp_path / "x.jsonl")


def test_column_mapping_and_missing_column_message():
    frame = pd.DataFrame({"Q": ["q"], "A": ["a"], "label": ["0"]})
    mapped = map_columns(frame, {"question": "Q", "answer": "A"}, {"question", "answer", "category"}, "f.csv")
    assert require_fields(mapped, (("messages",), ("question", "answer")), "f.csv") == ("question", "answer")
    with pytest.raises(UserError, match=r"f.csv: column `Qs`.*did you mean `Q`"):
        map_columns(frame, {"question": "Qs"}, {"question"}, "f.csv")
    with pytest.raises(UserError, match=r"f.csv: missing column `answer`.*data.columns"):
        require_fields(pd.DataFrame({"question": ["q"]}), (("question", "answer"),), "f.csv")


def test_clean_reports_empty_and_duplicate_rows_with_row_numbers():
    frame = pd.DataFrame({"question": ["a", " ", "a", "b"], "answer": ["x", "y", "x", ""]})
    report = DataReport("f.csv", rows_read=4)
    kept = clean(frame, ("question", "answer"), report, drop_duplicates=True)
    assert kept["question"].tolist() == ["a"]
    assert report.empty == 2 and report.examples["empty"] == [2, 4]
    assert report.duplicates == 1 and report.examples["duplicates"] == [3]
    assert any("empty: 2" in line for line in report.lines())


def test_filters_by_category_and_difficulty_and_unknown_value():
    frame = pd.DataFrame({"question": list("abcd"), "answer": list("wxyz"),
                          "category": ["law", "tax", "law", "law"], "difficulty": ["easy", "easy", "hard", "easy"]})
    report = DataReport("f.csv")
    kept = apply_filters(frame, ["law"], ["easy"], report)
    assert kept["question"].tolist() == ["a", "d"] and report.filtered_out == 2
    with pytest.raises(UserError, match=r"no rows with category `lawx`.*did you mean `law`"):
        apply_filters(frame, ["lawx"], [], DataReport("f.csv"))


def test_stratified_split_keeps_every_category_in_train_and_proportions():
    frame = pd.DataFrame({"category": ["a"] * 50 + ["b"] * 30 + ["c"] * 20 + ["d"], "x": range(101)})
    train, evaluation = train_eval_split(frame, 0.2, seed=0, stratify_by="category")
    assert len(train) + len(evaluation) == 101 and not set(train.index) & set(evaluation.index)
    assert evaluation["category"].value_counts().to_dict() == {"a": 10, "b": 6, "c": 4}
    assert set(train["category"]) == {"a", "b", "c", "d"}
    again = train_eval_split(frame, 0.2, seed=0, stratify_by="category")[1]
    assert again.index.tolist() == evaluation.index.tolist()  # deterministic


def test_grouped_split_never_splits_a_group():
    frame = pd.DataFrame({"qid": [i // 5 for i in range(100)], "x": range(100)})
    train, evaluation = train_eval_split(frame, 0.2, seed=1, group_by="qid")
    assert not set(train["qid"]) & set(evaluation["qid"])
    assert 15 <= len(evaluation) <= 25


def test_report_counts_add_up_read_valid_train_eval():
    report = DataReport("f.csv", rows_read=60, empty=8, duplicates=5, encoding="utf-8", encoding_confidence=1.0)
    report.rows_valid = report.rows_used = 47  # what the pipeline sets after cleaning and filters
    report.rows_train, report.rows_eval = 37, 10
    assert report.lines()[0] == "f.csv (utf-8): 60 read → 47 valid → 37 train / 10 eval"
    data = json.loads(json.dumps(report.to_dict()))
    assert (data["rows_valid"], data["rows_train"], data["rows_eval"], data["encoding"]) == (47, 37, 10, "utf-8")
    report.limited = 27  # data.max_rows=20
    report.rows_train, report.rows_eval = 18, 2
    assert report.lines()[0] == "f.csv (utf-8): 60 read → 47 valid → 20 kept (data.max_rows) → 18 train / 2 eval"


def test_report_counts_without_split_fields_still_add_up():
    """A pipeline that only sets rows_used still shows valid rows (read minus what was dropped)."""
    report = DataReport("f.csv", rows_read=60, empty=8, duplicates=4, filtered_out=1, rows_used=37,
                        encoding="cp949", encoding_confidence=0.93)
    assert report.lines()[0] == "f.csv (cp949, guessed with confidence 0.93): 60 read → 47 valid → 37 used"
    assert report.to_dict()["rows_valid"] == 47
    eval_file = DataReport("e.csv", rows_read=12, empty=2, rows_valid=10, rows_eval=10)
    assert eval_file.lines()[0] == "e.csv: 12 read → 10 valid → 10 eval"


def test_grouped_split_with_a_dominant_group_keeps_train_and_eval_nonempty():
    from tunelab.data.split import train_eval_split

    # One question holds 90% of the rows: it must not become the whole eval side (or leave train empty).
    frame = pd.DataFrame({"q": ["big"] * 90 + [f"small{i}" for i in range(10)], "x": range(100)})
    for seed in range(10):
        train, evaluation = train_eval_split(frame, 0.1, seed, group_by="q")
        assert len(train) >= 90 and 1 <= len(evaluation) <= 15, (seed, len(evaluation))
        assert not set(train["q"]) & set(evaluation["q"])
    two = pd.DataFrame({"q": ["a"] * 95 + ["b"] * 5, "x": range(100)})
    train, evaluation = train_eval_split(two, 0.1, 0, group_by="q")
    assert set(evaluation["q"]) == {"b"} and set(train["q"]) == {"a"}
    with pytest.raises(UserError, match="group_by"):
        train_eval_split(pd.DataFrame({"q": ["a"] * 5, "x": range(5)}), 0.2, 0, group_by="q")
