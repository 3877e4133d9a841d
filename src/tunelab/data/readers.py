"""Reading user files into DataFrames: CSV/TSV/JSON/JSONL/Parquet (optionally .gz), any common encoding.

Encoding detection: a UTF-16 BOM, else strict UTF-8 (with or without BOM),
else CP949 (a superset of EUC-KR). A file none of them decodes is a UserError
naming the line and byte, never a guess that yields mojibake, nor a traceback.
"""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pandas as pd

from tunelab.errors import UserError

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
_STRICT_ENCODINGS = ("utf-8-sig", "cp949")


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = SUFFIXES.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UserError(f"{path}: unknown file type `{''.join(path.suffixes)}`; use one of {', '.join(SUFFIXES)} (optionally .gz)")
    return fmt


def decode_bytes(raw: bytes, path: Path, encoding: str = "auto") -> tuple[str, str]:
    """Bytes -> (text, encoding used)."""
    if encoding != "auto":
        try:
            return raw.decode(encoding), encoding
        except LookupError:
            raise UserError(f"{path}: unknown encoding `{encoding}`") from None
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not valid {encoding} at byte {exc.start}; try `data.encoding: auto`") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), "utf-16"
    for name in _STRICT_ENCODINGS:
        try:
            text = raw.decode(name)
        except UnicodeDecodeError:
            continue
        if name == "utf-8-sig":
            return text, "utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8"
        return text, name
    # Guessing further (latin-1 decodes anything) would silently produce mojibake: ask instead.
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: cannot decode line {line} (byte {exc.start} is not UTF-8, and the file is not "
                        "CP949/EUC-KR either); save it as UTF-8 or set `data.encoding` (e.g. latin-1)") from None
    raise AssertionError("unreachable")


def read_table(path: str | Path, encoding: str = "auto") -> pd.DataFrame:
    """Read a data file into a DataFrame of strings/objects; every failure is a UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a data file")
    fmt = detect_format(path)
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise UserError(f"{path}: not a valid gzip file ({exc})") from None
    if not raw.strip():
        raise UserError(f"{path}: the file is empty")
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    else:
        text, _ = decode_bytes(raw, path, encoding)
        frame = _parse_text(text, fmt, path)
    if frame.empty:
        raise UserError(f"{path}: no data rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _parse_text(text: str, fmt: str, path: Path) -> pd.DataFrame:
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(io.StringIO(text), sep="," if fmt == "csv" else "\t", dtype=str,
                               keep_default_na=False, quoting=3 if fmt == "tsv" else 0)
        if fmt == "jsonl":
            rows = []
            for lineno, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
            return pd.DataFrame(rows)
        data = json.loads(text)
        if isinstance(data, dict):
            # {"data": [...]} style wrappers: take the single list value.
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise UserError(f"{path}: expected a JSON list of records (or an object holding one list)")
            data = lists[0]
        return pd.DataFrame(data)
    except UserError:
        raise
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise UserError(f"{path}: cannot parse as {fmt.upper()} ({str(exc).splitlines()[0]})") from None
