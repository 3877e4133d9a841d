"""Reading user files: encoding detection (never mojibake) and every broken file as one clear UserError."""
import json
import errno
from pathlib import Path

import pytest

from tunelab.data.readers import decode_text, read_table
from tunelab.data.stats import describe
from tunelab.data.validate import DataReport
from tunelab.errors import UserError

KO = "질문,답변,분류\n안녕하세요,반갑습니다,일상\n사랑해,고마워요,사랑\n"
KO_ROWS = [["안녕하세요", "반갑습니다", "일상"], ["사랑해", "고마워요", "사랑"]]


def write(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- encodings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding,certain", [("utf-8", True), ("utf-8-sig", True), ("utf-16", True),
                                              ("cp949", False), ("euc-kr", False)])
def test_korean_files_read_right_and_the_report_says_how(tmp_path, encoding, certain):
    report = DataReport("ko.csv")
    frame = read_table(write(tmp_path, "ko.csv", KO.encode(encoding)), report=report)
    assert list(frame.columns) == ["질문", "답변", "분류"]
    assert frame.values.tolist() == KO_ROWS
    assert report.encoding == {"euc-kr": "cp949"}.get(encoding, encoding)  # CP949 is a superset of EUC-KR
    assert report.encoding_confidence == 1.0 if certain else 0.85 <= report.encoding_confidence < 1.0
    assert frame.attrs["encoding"] == report.encoding
    json.dumps(report.to_dict())


@pytest.mark.parametrize("text", [
    "name,size\nGröße,Äpfel\nÄrger,Ärmel\n",  # valid CP949 byte pairs: read as CP949 this was mojibake (Gr秤e)
    "question,answer\nOù est le café ?,À côté de l'hôtel.\n",
    "q,a\n“Quoted”,it’s fine – really…\n",
])
def test_western_cp1252_file_reads_right_never_mojibake(tmp_path, text):
    report = DataReport("w.csv")
    frame = read_table(write(tmp_path, "w.csv", text.encode("cp1252")), report=report)
    expected = [line.split(",") for line in text.splitlines()]
    assert [list(frame.columns)] + frame.values.tolist() == expected
    assert report.encoding == "cp1252" and 0.6 <= report.encoding_confidence < 1.0
    assert "(cp1252, guessed with confidence" in report.lines()[0]


def test_latin1_name_given_in_config_is_used_with_full_confidence(tmp_path):
    report = DataReport("w.csv")
    frame = read_table(write(tmp_path, "w.csv", "q,a\ncafé,x\n".encode("latin-1")), "latin-1", report)
    assert frame.iloc[0]["q"] == "café" and (report.encoding, report.encoding_confidence) == ("latin-1", 1.0)
    with pytest.raises(UserError, match=r"w2.csv: line 3 is not valid utf-8"):
        read_table(write(tmp_path, "w2.csv", "q,a\nok,x\ncafé,x\n".encode("latin-1")), "utf-8")


@pytest.mark.parametrize("data,message", [
    (b"a,b\n\xb0\xa1,x\n", "reads as Korean \\(CP949\\) and as Western European \\(CP1252\\) alike"),  # 가 or °¡
    (b"a,b\ncaf\xe9 x,y\n", "cannot decode line 2.*best guess is cp1252.*`data.encoding: cp1252`"),  # one letter
    (b"a,b\n" + bytes(range(0x80, 0x100)) + b",x\n", "cannot decode line 2"),
    ("вопрос,ответ\nПривет мир,Спасибо\n".encode("cp1251"), "cannot decode line 1"),  # too short to tell
])
def test_short_or_ambiguous_bytes_are_a_clear_error_asking_for_the_encoding(tmp_path, data, message):
    with pytest.raises(UserError, match=message) as err:
        read_table(write(tmp_path, "amb.csv", data))
    assert "amb.csv" in str(err.value) and "data.encoding" in str(err.value)


def test_damaged_utf8_file_names_the_line_instead_of_guessing(tmp_path):
    data = "질문,답변\n안녕,하세요\n".encode() + b"\xff\xfe broken,x\n" + "사랑,해\n".encode()
    with pytest.raises(UserError, match=r"bad.csv: line 3 holds bytes that are not valid UTF-8, though the rest"):
        read_table(write(tmp_path, "bad.csv", data))


@pytest.mark.parametrize("text,codec,expected", [
    ("вопрос,ответ\n" + "Москва является столицей России и крупнейшим городом страны,Спасибо за помощь\n" * 3,
     "cp1251", "cp1251"),
    ("问题,答案\n" + "中华人民共和国是一个位于东亚的国家。北京是首都,谢谢你的帮助\n" * 3, "gbk", "gb18030"),
])
def test_other_languages_decode_right_when_the_detector_is_confident(tmp_path, text, codec, expected):
    report = DataReport("x.csv")
    frame = read_table(write(tmp_path, "x.csv", text.encode(codec)), report=report)
    assert frame.values.tolist()[0] == text.splitlines()[1].split(",")  # before: read as CP949, mojibake
    assert report.encoding == expected and report.encoding_confidence >= 0.6


def test_decode_text_reports_confidence():
    assert decode_text("abc".encode(), Path("x")).confidence == 1.0
    assert decode_text(KO.encode("cp949"), Path("x")).encoding == "cp949"


def test_describe_shows_the_encoding(tmp_path):
    info = describe(read_table(write(tmp_path, "ko.csv", KO.encode("cp949"))))
    assert info["encoding"] == "cp949" and info["encoding_confidence"] >= 0.85


# -- broken files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("line,kind", [("[1, 2]", "a list"), ('"text"', "a string"), ("3", "a number"),
                                       ("null", "null")])
def test_jsonl_line_that_is_not_an_object_is_named(tmp_path, line, kind):
    path = write(tmp_path, "d.jsonl", f'{{"question": "q", "answer": "a"}}\n{line}\n'.encode())
    with pytest.raises(UserError, match=rf"d.jsonl: line 2 is {kind}, not a JSON object"):
        read_table(path)


@pytest.mark.parametrize("content,message", [
    ('[1, 2]', "record 1 is a number, not a JSON object"),
    ('[{"question": "q"}, "oops"]', "record 2 is a string, not a JSON object"),
    ('{"data": [{"question": "q"}, [1]]}', "record 2 is a list, not a JSON object"),
    ('"just text"', "the JSON is a string; expected a list of records"),
    ('42', "the JSON is a number; expected a list of records"),
    ('[{"question": "q",}]', "not valid JSON at line 1, column 19"),
])
def test_json_whose_records_are_not_objects_is_a_clear_error(tmp_path, content, message):
    with pytest.raises(UserError, match=message) as err:
        read_table(write(tmp_path, "d.json", content.encode()))
    assert "d.json" in str(err.value)


def test_unreadable_file_is_a_clear_error(tmp_path, monkeypatch):
    path = write(tmp_path, "d.csv", b"q,a\nx,y\n")

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(UserError, match=r"^cannot read .*d.csv: permission denied$"):
        read_table(path)

    def io_error(self):
        raise OSError(errno.EIO, "Input/output error", str(self))
    monkeypatch.setattr(Path, "read_bytes", io_error)
    with pytest.raises(UserError, match=r"^cannot read .*d.csv: input/output error$"):
        read_table(path)


def test_a_folder_is_not_a_data_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        read_table(tmp_path / "dir.csv")


@pytest.mark.parametrize("name,content,message", [
    ("d.csv", "question,answer\nq1,a1\nq2,a, with comma\nq3,a3\n",
     r"d.csv: cannot parse as CSV: line 3 \(data row 2\) has 3 fields, but the header has 2 \(a value holding"),
    ("d.csv", 'question,answer\n"multi\nline",a1\n\nq2,a2,extra\n',  # physical line, not pandas' record count
     r"line 5 \(data row 2\) has 3 fields"),
    ("d.csv", 'question,answer\nq1,a1\n"never closed,a2\nq3,a3\n', r"a quote opened on line 3 \(data row 2\) is never closed"),
    # One field too many in the first data row: pandas made it the index and shifted every column.
    ("d.tsv", "question\tanswer\nq1\ta1\tx\n", r"d.tsv: cannot parse as TSV: line 2 \(data row 1\) has 3 fields"),
    ("d.csv", "question,answer\nq1,a1,x\nq2,a2\n", r"d.csv: cannot parse as CSV: line 2 \(data row 1\) has 3 fields"),
])
def test_ragged_csv_row_names_the_line(tmp_path, name, content, message):
    with pytest.raises(UserError, match=message):
        read_table(write(tmp_path, name, content.encode()))
