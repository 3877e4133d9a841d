"""Tokenizer fit: how many tokens a tokenizer spends per letter of each script in the data, and a warning
when it spends too many (SmolLM2 reads Hangul as bytes: 2.8 tokens per syllable, against 0.76 for Gemma 3).

A leaf module (tokenizer + texts in, numbers and one line out) shared by `tunelab lab tokens`,
`tunelab data lengths` and the training recipe, which warns before training starts.
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

MAX_TOKENS_PER_LETTER = 2.0
"""Above this a script's text is read close to byte by byte: sequences get ~3x longer (max_length truncates
more, every step costs more) and the model rarely saw the language. Gemma 3 is 0.76 on Hangul, SmolLM2 2.83."""
MIN_SHARE = 0.2
"""A script must hold this share of the data's letters to matter (a few Latin words in Korean text do not)."""
SAMPLE_ROWS = 400
"""Rows measured before training: enough for a stable ratio (±0.02 on the Korean sample), well under a second."""


@dataclass
class ScriptCost:
    script: str
    characters: int
    tokens: int
    unknown_tokens: int

    @property
    def tokens_per_character(self) -> float:
        return self.tokens / self.characters if self.characters else 0.0


def script_of(ch: str) -> str | None:
    """The writing system of a letter (Hangul, Latin, CJK, ...), None for spaces, digits and punctuation."""
    if not ch.isalpha():
        return None
    code = ord(ch)
    if 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "Hangul"
    name = unicodedata.name(ch, "")
    for script in ("LATIN", "CJK", "HIRAGANA", "KATAKANA", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "THAI",
                   "DEVANAGARI"):
        if name.startswith(script):
            return script.capitalize() if script != "CJK" else "CJK"
    return "other letters"


def script_costs(tokenizer, texts: Iterable[str]) -> list[ScriptCost]:
    """Tokens per letter for each script in `texts`, most frequent script first. A token counts for the script
    most of its letters belong to; tokens with no letter (spaces, digits, punctuation) count for no script.
    Needs a fast tokenizer (offsets); a slow one gives no costs ([])."""
    characters: Counter = Counter()
    tokens: Counter = Counter()
    unknown: Counter = Counter()
    unk_id = tokenizer.unk_token_id
    for text in texts:
        for ch in text:
            script = script_of(ch)
            if script:
                characters[script] += 1
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        except NotImplementedError:  # a slow (Python) tokenizer has no offsets
            return []
        for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
            scripts = Counter(s for s in map(script_of, text[start:end]) if s)
            if scripts:
                script = scripts.most_common(1)[0][0]
                tokens[script] += 1
                unknown[script] += int(unk_id is not None and token_id == unk_id)
    return [ScriptCost(s, characters[s], tokens[s], unknown[s]) for s, _ in characters.most_common()]


def frame_texts(frame, rows: int = SAMPLE_ROWS) -> list[str]:
    """The non-empty text cells of a data frame's first `rows` rows (every column holding strings)."""
    head = frame.head(rows)
    columns = [c for c in head.columns if head[c].map(lambda v: isinstance(v, str)).any()]
    return [v for c in columns for v in head[c].tolist() if isinstance(v, str) and v.strip()]


def costly_scripts(costs: list[ScriptCost], limit: float = MAX_TOKENS_PER_LETTER) -> list[ScriptCost]:
    """The scripts with a real share of the letters on which the tokenizer spends more than `limit` per letter."""
    total = sum(c.characters for c in costs)
    return [c for c in costs if total and c.characters / total >= MIN_SHARE and c.tokens_per_character > limit]


def better_model(script: str, current: str | None, kind: str | None = None) -> tuple[str, float] | None:
    """The packaged model of `kind` (default: the kind of `current` if packaged, else decoder) that spends the
    fewest tokens per letter of `script`, from the registry's static table of measured figures
    (`TOKENS_PER_LETTER`), if it fits (<= the limit) and is not `current`."""
    from tunelab.models.registry import ALIASES, PACKAGED, TOKENS_PER_LETTER

    current = ALIASES.get(current or "", current)
    kind = kind or (PACKAGED[current].kind if current in PACKAGED else "decoder")
    fits = sorted((figures[script], alias) for alias, figures in TOKENS_PER_LETTER.items()
                  if script in figures and PACKAGED[alias].kind == kind and figures[script] <= MAX_TOKENS_PER_LETTER
                  and alias != current)
    return (fits[0][1], fits[0][0]) if fits else None


def fit_warning(tokenizer, texts: Iterable[str], model: str | None = None, kind: str | None = None) -> str | None:
    """One line when `tokenizer` spends more than ~2 tokens per letter on the data's main script(s), naming a
    better-fitting packaged model; None when it fits."""
    bad = costly_scripts(script_costs(tokenizer, texts))
    if not bad:
        return None
    worst = max(bad, key=lambda c: c.tokens_per_character)
    line = (f"warning: the tokenizer of {model or 'this model'} spends {worst.tokens_per_character:.2f} tokens per "
            f"{worst.script} letter of this data (more than {MAX_TOKENS_PER_LETTER:.0f}: it reads the text nearly byte "
            "by byte, so sequences are long and the model rarely saw the language)")
    better = better_model(worst.script, model, kind)
    if better:
        line += f"; better fit: packaged `{better[0]}` ({better[1]:.2f} tokens per {worst.script} letter)"
    return line


def warn_on_tokenizer_fit(tokenizer, frame, model: str | None, echo: Callable[[str], None],
                          kind: str | None = None) -> str | None:
    """Measure the first rows of `frame` and echo the warning, if any (the training recipe calls this)."""
    warning = fit_warning(tokenizer, frame_texts(frame), model, kind)
    if warning:
        echo(warning)
    return warning
