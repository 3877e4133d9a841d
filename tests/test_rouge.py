"""ROUGE against values computed by hand (English, Korean, multi-reference, Lsum)."""
from __future__ import annotations

import pytest

from tunelab.metrics.rouge import RougeMetric, RougeTokenizer, rouge, split_sentences


def f1(overlap: int, n_pred: int, n_ref: int) -> float:
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r) if overlap else 0.0


def test_tokenizer_unicode_words_lowercase_and_hangul_syllables():
    tok = RougeTokenizer()
    assert tok.tokenize("The CAT, sat!") == ["the", "cat", "sat"]
    assert tok.tokenize("Café 3pm") == ["café", "3pm"]
    assert tok.tokenize("나는 학교에") == ["나", "는", "학", "교", "에"]
    assert tok.tokenize("AI 모델") == ["ai", "모", "델"]
    assert tok.tokenize("東京") == ["東", "京"]
    assert tok.tokenize("ＡＢＣ") == ["abc"]  # full-width letters normalised (NFKC)
    assert RougeTokenizer("word").tokenize("나는 학교에, 갔다.") == ["나는", "학교에", "갔다"]
    with pytest.raises(ValueError):
        RougeTokenizer("morpheme")


def test_english_by_hand():
    # ref: the cat sat on the mat (6) / pred: the cat lay on the mat (6)
    # unigrams in common: the x2, cat, on, mat = 5; bigrams: "the cat", "on the", "the mat" = 3 of 5;
    # LCS: the cat on the mat = 5.
    s = RougeMetric().score_one("The cat lay on the mat", "The cat sat on the mat.")
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)
    assert s["rougeLsum"] == pytest.approx(5 / 6)


def test_english_unequal_lengths_by_hand():
    # pred: police arrested the man (4) / ref: the police quickly arrested a man yesterday (7)
    # unigrams in common: police, arrested, the, man = 4; bigrams: none in common -> 0;
    # LCS: police arrested man = 3.
    s = RougeMetric().score_one("Police arrested the man", "The police quickly arrested a man yesterday")
    assert s["rouge1"] == pytest.approx(f1(4, 4, 7))
    assert s["rouge2"] == 0.0
    assert s["rougeL"] == pytest.approx(f1(3, 4, 7))


def test_korean_syllables_by_hand():
    # ref 나는 학교에 갔다 -> 나 는 학 교 에 갔 다 (7); pred 나는 학교를 갔어 -> 나 는 학 교 를 갔 어 (7)
    # syllables in common: 나 는 학 교 갔 = 5; bigrams in common: 나는, 는학, 학교 = 3 of 6; LCS = 5.
    s = RougeMetric().score_one("나는 학교를 갔어", "나는 학교에 갔다")
    assert s["rouge1"] == pytest.approx(5 / 7)
    assert s["rouge2"] == pytest.approx(3 / 6)
    assert s["rougeL"] == pytest.approx(5 / 7)


def test_korean_word_mode_by_hand_and_default_tokenizer_would_score_zero():
    # eojeol-level: only 나는 matches -> 1/3; the bigram 나는-학교에 does not.
    s = RougeMetric("word").score_one("나는 학교를 갔어", "나는 학교에 갔다")
    assert s["rouge1"] == pytest.approx(1 / 3)
    assert s["rouge2"] == 0.0
    # rouge-score's own tokenizer drops every Hangul character: that is why we bring our own.
    from rouge_score import rouge_scorer

    plain = rouge_scorer.RougeScorer(["rouge1"]).score("나는 학교에 갔다", "나는 학교에 갔다")
    assert plain["rouge1"].fmeasure == 0.0
    assert RougeMetric().score_one("나는 학교에 갔다", "나는 학교에 갔다")["rouge1"] == 1.0


def test_multi_reference_takes_best_reference_per_example_then_averages():
    # example 1: pred a b c; ref1 a b c d -> R1 F = 2*(1*3/4)/(1+3/4) = 6/7; ref2 a b x y -> 4/7; max 6/7.
    #            bigrams vs ref1: ab, bc of (ab, bc, cd) -> P 1, R 2/3 -> 0.8.
    # example 2: pred x y; ref x z -> R1 1/2, R2 0.
    metric = RougeMetric()
    each = metric.score_each(["a b c", "x y"], [["a b c d", "a b x y"], "x z"])
    assert each[0]["rouge1"] == pytest.approx(6 / 7)
    assert each[0]["rouge2"] == pytest.approx(0.8)
    assert each[1]["rouge1"] == pytest.approx(0.5)
    assert each[1]["rouge2"] == 0.0
    total = metric.score(["a b c", "x y"], [["a b c d", "a b x y"], "x z"])
    assert total["rouge1"] == pytest.approx((6 / 7 + 0.5) / 2)
    assert total["rouge2"] == pytest.approx(0.4)
    # the order of references does not matter, and blank extra references are ignored
    assert metric.score_one("a b c", ["a b x y", "", "a b c d"]) == metric.score_one("a b c", ["a b c d"])


def test_korean_multi_reference():
    # pred 회의가 취소됐다 -> 회 의 가 취 소 됐 다 (7)
    # ref1 회의는 연기됐다 -> 회 의 는 연 기 됐 다 (7): common 회 의 됐 다 = 4 -> 4/7
    # ref2 회의가 취소되었다 -> 회 의 가 취 소 되 었 다 (8): common 회 의 가 취 소 다 = 6 -> F = 2*6/(7+8) = 0.8
    s = RougeMetric().score_one("회의가 취소됐다", ["회의는 연기됐다", "회의가 취소되었다"])
    assert s["rouge1"] == pytest.approx(0.8)


def test_rouge_lsum_uses_sentences():
    # rougeL over the whole text: a b c d vs c d a b -> LCS 2 of 4 = 0.5;
    # rougeLsum: each reference sentence is fully covered by some predicted sentence -> 1.0.
    s = RougeMetric().score_one("c d. a b.", "a b. c d.")
    assert s["rougeL"] == pytest.approx(0.5)
    assert s["rougeLsum"] == pytest.approx(1.0)
    assert split_sentences("First one. Second!\n하나. 둘") == "First one.\nSecond!\n하나.\n둘"


def test_empty_prediction_scores_zero_and_missing_reference_is_an_error():
    assert rouge([""], ["a summary"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}
    with pytest.raises(ValueError, match="reference"):
        RougeMetric().score_one("x", ["", "  "])
    with pytest.raises(ValueError, match="2 predictions"):
        RougeMetric().score(["a", "b"], ["a"])
