"""Data processor for MAP (Charting Student Math Misunderstandings) style data.

Rows: QuestionId, QuestionText, MC_Answer, StudentExplanation, Category, Misconception.
- label = `Category:Misconception`, with a missing misconception written `NA`;
- answer correctness: per QuestionId, the correct multiple-choice answer is the one most
  often chosen in training rows whose Category starts with `True_`; every row (train,
  eval, test) gets "the student's answer is correct/incorrect" from that mapping, which is
  learned in `fit` and saved in the task state so test data gets the same feature.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from tunelab.data.validate import is_blank
from tunelab.errors import UserError

CORRECTNESS_FIELD = "AnswerCorrectness"
_PHRASES = {True: "The student's answer is correct.", False: "The student's answer is incorrect.",
            None: "Whether the student's answer is correct is unknown."}


class MapMisconceptionProcessor:
    name = "map_misconception"
    input_fields = ("QuestionId", "QuestionText", "MC_Answer", "StudentExplanation")
    text_fields = ("QuestionText", "MC_Answer", CORRECTNESS_FIELD, "StudentExplanation")
    optional_fields = ("Category", "Misconception", "row_id")
    label_fields = ("Category", "Misconception")
    id_field = "row_id"

    def __init__(self) -> None:
        self.correct_answer: dict[str, str] = {}

    def prepare(self, frame: pd.DataFrame, split: str) -> pd.DataFrame:
        """Build `label` from Category and Misconception when the file has them (train/eval)."""
        if "Category" not in frame.columns:
            return frame
        frame = frame.copy()
        misconception = frame["Misconception"] if "Misconception" in frame.columns else pd.Series("NA", index=frame.index)
        category = frame["Category"].map(lambda v: "" if is_blank(v) else str(v).strip())
        misconception = misconception.map(lambda v: "NA" if is_blank(v) else str(v).strip())
        frame["label"] = [f"{c}:{m}" if c else None for c, m in zip(category, misconception)]
        return frame

    def fit(self, train: pd.DataFrame) -> None:
        if "Category" not in train.columns:
            raise UserError("processor map_misconception: the training data has no `Category` column "
                            "(needed to learn each question's correct answer)")
        true_rows = train[train["Category"].astype(str).str.startswith("True_")]
        mapping: dict[str, str] = {}
        for qid, answers in true_rows.groupby(true_rows["QuestionId"].astype(str))["MC_Answer"]:
            counts = answers.astype(str).str.strip().value_counts()
            best = counts[counts == counts.max()].index
            mapping[qid] = sorted(best)[0]  # ties: deterministic choice
        self.correct_answer = mapping

    def is_correct(self, question_id, answer) -> bool | None:
        correct = self.correct_answer.get(str(question_id))
        if correct is None:
            return None
        return str(answer).strip() == correct

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Add the answer-correctness sentence as a text field."""
        frame = frame.copy()
        frame[CORRECTNESS_FIELD] = [_PHRASES[self.is_correct(q, a)]
                                    for q, a in zip(frame["QuestionId"], frame["MC_Answer"])]
        return frame

    def state(self) -> dict[str, Any]:
        return {"correct_answer": self.correct_answer}

    def load_state(self, state: dict[str, Any]) -> None:
        self.correct_answer = dict(state.get("correct_answer", {}))


PROCESSORS = {MapMisconceptionProcessor.name: MapMisconceptionProcessor}
