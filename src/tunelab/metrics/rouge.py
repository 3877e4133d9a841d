"""ROUGE-1/2/L/Lsum for any language, with multiple references per example.

Scoring is `rouge-score`'s `RougeScorer` (n-gram overlap, LCS, summary-level
LCS); only the tokenizer is ours, because the package's default tokenizer
keeps `[a-z0-9]` only and so scores every Korean summary 0.

Tokenization (`RougeTokenizer`):
- NFKC normalisation and lowercasing;
- words = runs of Unicode letters/digits (any script), split at whitespace
  and punctuation; no stemming (the Porter stemmer is English-only and the
  scores should mean the same thing in every language);
- Hangul, CJK ideographs and kana: one token per character (`cjk="char"`,
  the default). Korean attaches particles and endings to the word (학교에,
  학교를, 학교가 are one eojeol each), so whitespace units almost never match
  across a prediction and a reference that say the same thing; syllables do,
  without a morphological analyser (no extra dependency, deterministic).
  Syllable bigrams (ROUGE-2) still reward getting word-internal order right.
  This is the usual choice for scripts without reliable word boundaries
  (character-level ROUGE for Chinese/Japanese). Scores are therefore on a
  different scale from word-level English ROUGE: compare runs, not languages.
  `cjk="word"` keeps whitespace/punctuation units instead (eojeol-level).

Multiple references (DialogSum's test set has summary1..3): per example and
per ROUGE type, the F-measure against the best-matching reference is taken
(rouge-score's `score_multi`), then averaged over examples. An example with
an empty prediction scores 0.

ROUGE-Lsum needs one sentence per line; summaries are usually one line, so
sentences are split at `.` `!` `?` (and their full-width forms) followed by
whitespace, and at line breaks, before scoring.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Literal, Sequence

from rouge_score import rouge_scorer, tokenizers

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
CjkMode = Literal["char", "word"]

# Hangul syllables and jamo, CJK ideographs (+ ext. A, compatibility), hiragana, katakana.
_CJK = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff"
_CHAR_TOKENS = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")
_WORD_TOKENS = re.compile(r"[^\W_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


class RougeTokenizer(tokenizers.Tokenizer):
    """Unicode-aware tokens for rouge-score: words of any script, CJK/Hangul per character (see module doc)."""

    def __init__(self, cjk: CjkMode = "char"):
        if cjk not in ("char", "word"):
            raise ValueError(f"cjk must be 'char' or 'word', not {cjk!r}")
        self.cjk = cjk
        self._pattern = _CHAR_TOKENS if cjk == "char" else _WORD_TOKENS

    def tokenize(self, text: str) -> list[str]:
        return self._pattern.findall(unicodedata.normalize("NFKC", text or "").lower())


def split_sentences(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects."""
    return "\n".join(s.strip() for s in _SENTENCE_END.split(text or "") if s.strip())


class RougeMetric:
    """Scores predictions against one or more references each; F-measures in [0, 1]."""

    def __init__(self, cjk: CjkMode = "char", rouge_types: Sequence[str] = ROUGE_TYPES):
        self.rouge_types = tuple(rouge_types)
        self._scorer = rouge_scorer.RougeScorer(list(self.rouge_types), tokenizer=RougeTokenizer(cjk))

    def score_one(self, prediction: str, references: str | Sequence[str]) -> dict[str, float]:
        """Per-type F-measure against the best-matching reference."""
        refs = [references] if isinstance(references, str) else [r for r in references if r and str(r).strip()]
        if not refs:
            raise ValueError("an example needs at least one non-empty reference")
        scores = self._scorer.score_multi([split_sentences(r) for r in refs], split_sentences(prediction or ""))
        return {k: float(scores[k].fmeasure) for k in self.rouge_types}

    def score_each(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[dict[str, float]]:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference sets")
        return [self.score_one(p, r) for p, r in zip(predictions, references)]

    def score(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
        """Mean over examples of the per-example best-reference F-measure."""
        return mean_scores(self.score_each(predictions, references), self.rouge_types)


def mean_scores(per_example: Iterable[dict[str, float]], rouge_types: Sequence[str] = ROUGE_TYPES) -> dict[str, float]:
    rows = list(per_example)
    if not rows:
        return {k: 0.0 for k in rouge_types}
    return {k: sum(r[k] for r in rows) / len(rows) for k in rouge_types}


def rouge(predictions: Sequence[str], references: Sequence[str | Sequence[str]], cjk: CjkMode = "char") -> dict[str, float]:
    """Corpus ROUGE: {rouge1, rouge2, rougeL, rougeLsum} F-measures averaged over examples."""
    return RougeMetric(cjk).score(predictions, references)
