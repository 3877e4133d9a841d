"""Reading user files into DataFrames: CSV/TSV/JSON/JSONL/Parquet (optionally .gz), any common encoding.

Encoding detection (`decode_text`): a UTF-16/32 byte-order mark, else strict UTF-8 (with or without BOM),
else CP949 (Korean, a superset of EUC-KR) or CP1252 (Western European, a superset of Latin-1), whichever
decoding is plausible text, else charset_normalizer's guess when it is confident. A file no encoding fits
with confidence is a UserError asking for `data.encoding`, never a guess that yields mojibake, nor a
traceback. The encoding used and its confidence go into the data report.
"""
from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tunelab.errors import UserError
from tunelab.io.files import read_user_file

if TYPE_CHECKING:
    from tunelab.data.validate import DataReport

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = SUFFIXES.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UserError(f"{path}: unknown file type `{''.join(path.suffixes)}`; use one of {', '.join(SUFFIXES)} (optionally .gz)")
    return fmt


# -- encoding detection ---------------------------------------------------------------------------
ACCEPT = 0.6
"""Lowest confidence at which a guessed encoding is used; below it the user is asked to name one."""
SURE = 0.85
"""A CP949/CP1252 reading this plausible is taken without asking charset_normalizer."""

_TYPOGRAPHY = set("€“”‘’‚„–—…«»‹›°£§©®™•¿¡·†‡")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_SAMPLE_CHARS = 100_000


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str
    confidence: float
    """1.0 for a byte-order mark, strict UTF-8 or an encoding the user named; else the plausibility of the guess."""
    how: str = "detected"  # "detected" | "guessed" | "given"


def _sample(text: str) -> str:
    if len(text) <= _SAMPLE_CHARS:
        return text
    half = _SAMPLE_CHARS // 2
    return text[:half] + "\n" + text[-half:]


@functools.lru_cache(maxsize=8192)
def _korean_weight(ch: str) -> float:
    """How much one character of a CP949 decoding speaks for Korean (-1.0 marks a Hangul syllable's 1.0)."""
    code = ord(ch)
    if 0xAC00 <= code <= 0xD7A3:
        lead, trail = ch.encode("cp949")
        # One of the 2,350 KS X 1001 (EUC-KR) syllables, or a UHC extension one (똠, 햏): real, but rare.
        return -1.0 if lead >= 0xB0 and trail >= 0xA1 else -0.2
    if 0x3131 <= code <= 0x318E:
        return 1.0  # compatibility jamo (ㅋㅋ, ㅠㅠ)
    if (0x2000 <= code <= 0x206F or 0x3000 <= code <= 0x303F or 0xFF00 <= code <= 0xFFEF or 0x2460 <= code <= 0x24FF
            or 0x25A0 <= code <= 0x25FF or 0x3200 <= code <= 0x32FF or code == 0xB7):
        return 0.5  # punctuation and symbols: Korean texts use them, but they prove little
    return 0.0  # Hanja, Latin, anything else: what Latin-1 or Chinese bytes read as CP949 turn into


def korean_plausibility(text: str | None) -> float:
    """How much a CP949 decoding looks like Korean: the share of its non-ASCII characters that are
    everyday Hangul (the 2,350 KS X 1001 syllables, jamo) or CJK punctuation. Latin-1 bytes read as CP949
    come out as Hanja or the rare extension syllables instead. 0.0 when there is no Hangul at all."""
    if not text:
        return 0.0
    total = good = 0.0
    hangul = False
    for run in _NON_ASCII_RUN.findall(_sample(text)):
        for ch in run:
            weight = _korean_weight(ch)
            if weight < 0:
                hangul, weight = True, -weight
            total += 1
            good += weight
    if not hangul:
        return 0.0
    return good / total * _evidence(total)


@functools.lru_cache(maxsize=8192)
def _western_class(ch: str) -> str:
    """'letter' (an accented Latin letter), 'typo' (typographic punctuation), 'symbol', or 'other'."""
    category = unicodedata.category(ch)
    if category.startswith("L") and "LATIN" in unicodedata.name(ch, ""):
        return "letter"
    if ch in _TYPOGRAPHY or ch == "\u00a0":
        return "typo"
    return "symbol" if category[0] in "NSZ" else "other"  # C1 controls: no Western text has them


def western_plausibility(text: str | None) -> float:
    """How much a CP1252 decoding looks like a Western European language: accented Latin letters inside
    (or as) words and typographic punctuation, one or two at a time. Korean bytes read as CP1252 come
    out as long runs of symbols and accented capitals instead."""
    if not text:
        return 0.0
    total = good = 0.0
    sample = _sample(text)
    for match in _NON_ASCII_RUN.finditer(sample):
        run = match.group()
        total += len(run)
        if len(run) > 3:
            continue  # no Western word has four accented letters or symbols in a row
        before = sample[match.start() - 1] if match.start() else " "
        after = sample[match.end()] if match.end() < len(sample) else " "
        letter_before, letter_after = before.isalpha(), after.isalpha()
        classes = [_western_class(ch) for ch in run]
        if all(c == "letter" for c in classes):  # Größe, café, à, ção: accented letters inside (or as) a word
            if letter_before or letter_after or len(run) == 1:
                good += len(run)
            continue
        for ch, kind in zip(run, classes):
            if kind == "typo" and len(run) <= 2:
                # “quotes”, it’s, 3 €, ¿Qué?; but no ¿ or ¡ right after a letter (Polish ż, ł read as CP1252)
                if not (ch in "¿¡" and letter_before):
                    good += 1
            elif kind == "symbol" and len(run) == 1 and not (letter_before and letter_after):
                good += 0.5  # ½ ² ± ¥ alone: possible, not telling
    return good / total * _evidence(total) if total else 0.0


def _evidence(non_ascii: float) -> float:
    """A plausibility resting on one or two characters is weaker than one resting on a page."""
    return min(1.0, 0.4 + non_ascii / 10)  # one character: 0.5 (too little to go on), six or more: 1.0


def _strict(raw: bytes, encoding: str) -> str | None:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return None


def _first_bad_utf8_line(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw[: exc.start].count(b"\n") + 1
    return 0


def _detector_guess(raw: bytes) -> Decoded | None:
    """charset_normalizer's best guess, with our own confidence: its chaos, the language coherence (for
    single-byte code pages, which all decode anything), how much text backs it, and its margin over the
    next guess that reads differently. On a few bytes the detector names plausible-looking wrong code
    pages; these rules turn that into a low confidence instead of mojibake."""
    from charset_normalizer import from_bytes
    from charset_normalizer.utils import is_multi_byte_encoding

    matches = list(from_bytes(raw))[:4]
    if not matches:
        return None
    best, text = matches[0], str(matches[0])
    non_ascii = sum(len(run) for run in _NON_ASCII_RUN.findall(_sample(text)))
    confidence = (1.0 - best.chaos) * min(1.0, non_ascii / 40)
    if not is_multi_byte_encoding(best.encoding):
        confidence *= min(1.0, best.coherence / 0.5)
    for other in matches[1:]:
        if other.chaos <= best.chaos + 0.05 and str(other) != text:  # a rival reading, about as clean
            confidence *= max(0.0, min(1.0, (best.coherence - other.coherence) / 0.25))
            break
    return Decoded(text, best.encoding, round(confidence, 2), "guessed")


def decode_text(raw: bytes, path: Path, encoding: str = "auto") -> Decoded:
    """Bytes -> text, the encoding used and a confidence; a UserError when the encoding cannot be told.

    Order: a UTF-16/32 byte-order mark; strict UTF-8 (with or without BOM); then CP949 (Korean, a
    superset of EUC-KR) against CP1252 (Western European, a superset of Latin-1), each decoding judged by
    how plausible its characters are; then charset_normalizer for other languages. A guess below
    `ACCEPT` confidence is an error asking for `data.encoding`, never mojibake.
    """
    if encoding != "auto":
        try:
            # A byte-order mark is never data (a UTF-8 BOM would otherwise stick to the first column name).
            return Decoded(raw.decode(encoding).removeprefix("\ufeff"), encoding, 1.0, "given")
        except LookupError:
            raise UserError(f"{path}: unknown encoding `{encoding}` (data.encoding); use e.g. utf-8, cp949, "
                            "cp1252, latin-1 or auto") from None
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise UserError(f"{path}: line {line} is not valid {encoding} (byte {exc.start}); "
                            "try `data.encoding: auto`") from None
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return _decode_bom(raw, "utf-32", path)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _decode_bom(raw, "utf-16", path)
    text = _strict(raw, "utf-8-sig")
    if text is not None:
        return Decoded(text, "utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8", 1.0)

    line = _first_bad_utf8_line(raw)
    lenient = _sample(raw[: 4 * _SAMPLE_CHARS].decode("utf-8", errors="replace"))
    damaged = lenient.count("\ufffd")
    if sum(len(run) for run in _NON_ASCII_RUN.findall(lenient)) - damaged >= 3 * damaged:
        # Mostly well-formed UTF-8 (other encodings almost never form valid UTF-8 sequences): a damaged
        # UTF-8 file, not another encoding; decoding it as one would garble all the good text.
        raise UserError(f"{path}: line {line} holds bytes that are not valid UTF-8, though the rest of the file "
                        f"is UTF-8 ({damaged} bad byte sequence{'s' if damaged > 1 else ''}); fix or remove them, "
                        "or set `data.encoding` if the file really is in another encoding")
    cp949 = _strict(raw, "cp949")
    cp1252 = _strict(raw, "cp1252")
    korean, western = korean_plausibility(cp949), western_plausibility(cp1252)
    candidate = None
    if cp949 is not None and korean >= western:
        candidate = Decoded(cp949, "cp949", round(korean * (1.0 - western), 2), "guessed")
    elif cp1252 is not None and western > korean:
        candidate = Decoded(cp1252, "cp1252", round(western * (1.0 - korean), 2), "guessed")
    if candidate is not None and candidate.confidence >= SURE:
        return _guessed(candidate)
    if min(korean, western) >= 0.5:  # both read fine: too little text to tell
        raise UserError(f"{path}: cannot tell the text encoding: line {line} is not UTF-8 and reads as Korean "
                        f"(CP949) and as Western European (CP1252) alike; set `data.encoding: cp949` or "
                        f"`data.encoding: cp1252` (or save the file as UTF-8)")
    guess = _detector_guess(raw)
    if guess is not None and candidate is not None and guess.text == candidate.text:
        # Two independent judges agree: combine their confidences.
        both = round(1.0 - (1.0 - candidate.confidence) * (1.0 - guess.confidence), 2)
        candidate = guess = Decoded(candidate.text, candidate.encoding, both, "guessed")
    fitting = [d for d in (candidate, guess) if d is not None and d.confidence >= ACCEPT]
    if fitting:
        return _guessed(max(fitting, key=lambda d: d.confidence))
    if candidate is not None and candidate.confidence > 0.2:  # (the detector's weak guesses are too often wrong to offer)
        ask = (f"the best guess is {candidate.encoding}, with confidence {candidate.confidence:.2f} only; set "
               f"`data.encoding: {candidate.encoding}` if that is right, or save the file as UTF-8")
    else:
        ask = "save the file as UTF-8 or set `data.encoding: NAME` (e.g. cp949, cp1252, latin-1)"
    raise UserError(f"{path}: cannot decode line {line}: it is not UTF-8 and no encoding fits it with confidence; {ask}")


def _guessed(decoded: Decoded) -> Decoded:
    """A guess is never certain: 1.0 is kept for what the bytes prove (a BOM, valid UTF-8) or the user named."""
    return Decoded(decoded.text, decoded.encoding, min(decoded.confidence, 0.99), "guessed")


def _decode_bom(raw: bytes, encoding: str, path: Path) -> Decoded:
    try:
        return Decoded(raw.decode(encoding), encoding, 1.0)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: starts with a {encoding.upper()} byte-order mark but byte {exc.start} is not "
                        f"valid {encoding.upper()}; save it again as UTF-8") from None


# -- reading --------------------------------------------------------------------------------------

def read_table(path: str | Path, encoding: str = "auto", report: DataReport | None = None) -> pd.DataFrame:
    """Read a data file into a DataFrame of strings/objects; every failure is a UserError naming the file.

    The encoding used and its confidence are stored in `frame.attrs` ("encoding", "encoding_confidence")
    and, when a `report` is given, in `report.encoding` / `report.encoding_confidence`.
    """
    path = Path(path)
    raw = read_user_file(path, "data file")
    fmt = detect_format(path)
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: not a valid gzip file ({exc})") from None
    if not raw.strip():
        raise UserError(f"{path}: the file is empty")
    decoded = None
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    else:
        decoded = decode_text(raw, path, encoding)
        frame = _parse_text(decoded.text, fmt, path)
    if frame.empty:
        raise UserError(f"{path}: no data rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    if decoded is not None:
        frame.attrs.update(encoding=decoded.encoding, encoding_confidence=decoded.confidence)
        if report is not None:
            report.encoding, report.encoding_confidence = decoded.encoding, decoded.confidence
    return frame


_KIND = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false", type(None): "null"}


def _kind(value) -> str:
    return _KIND.get(type(value), type(value).__name__)


def _parse_text(text: str, fmt: str, path: Path) -> pd.DataFrame:
    if fmt in ("csv", "tsv"):
        return _parse_delimited(text, fmt, path)
    if fmt == "jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}: line {lineno} is {_kind(record)}, not a JSON object; each line must be one "
                                'record like {"question": "...", "answer": "..."}')
            rows.append(record)
        return pd.DataFrame(rows)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})") from None
    if isinstance(data, dict):
        # {"data": [...]} style wrappers: take the single list value.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of records (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: the JSON is {_kind(data)}; expected a list of records like "
                        '[{"question": "...", "answer": "..."}, ...]')
    for number, record in enumerate(data, 1):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {number} is {_kind(record)}, not a JSON object; expected a list of records "
                            'like [{"question": "...", "answer": "..."}, ...]')
    return pd.DataFrame(data)


def _parse_delimited(text: str, fmt: str, path: Path) -> pd.DataFrame:
    sep, quoting = ("," if fmt == "csv" else "\t"), (csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    try:
        with warnings.catch_warnings():
            # index_col=False: a first data row with one field too many must not silently become the index
            # (shifting every column); pandas then only warns about the extra field, and we stop on it.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, quoting=quoting,
                               index_col=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: no header line (the file has no columns)") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError) as exc:
        where = _locate_row_problem(text, sep, quoting)
        detail = where or str(exc).splitlines()[0]
        raise UserError(f"{path}: cannot parse as {fmt.upper()}: {detail}") from None


def _locate_row_problem(text: str, sep: str, quoting: int) -> str | None:
    """Find the record pandas choked on with the csv module, which knows physical line numbers."""
    reader = csv.reader(io.StringIO(text), delimiter=sep, quoting=quoting, strict=True)
    start, row = 1, 0
    try:
        header = next(reader)
        start = reader.line_num + 1
        for record in reader:
            if record:  # pandas skips blank lines; so do its row numbers
                row += 1
                if len(record) > len(header):
                    quote_hint = " (a value holding the separator needs quotes)" if sep == "," else ""
                    return (f"line {start} (data row {row}) has {len(record)} fields, but the header has "
                            f"{len(header)}{quote_hint}")
            start = reader.line_num + 1
    except csv.Error:
        return f"a quote opened on line {start} (data row {row + 1}) is never closed"
    except StopIteration:
        return None
    return None
