"""Derive the small datasets shipped inside the package from ../shared/data (run once; outputs are committed).

- qa_en_instructions.csv: all 252 rows of self-instruct's user-oriented instructions
  (yizhongw/self-instruct@0b26cca, Apache-2.0) as question,answer,category,difficulty.
  category = the app that motivated the task; difficulty = answer length bucket
  (short < 100 chars, medium < 400, long otherwise) — a derived field, used to demo filters.
- qa_ko_chatbot_sample.csv: 600 rows (200 per label, seed 1234) of songys/Chatbot_data@4cf20d1 (MIT)
  as question,answer,category with the label ids named (daily, breakup, love).
"""
import csv
import json
import random
from pathlib import Path

shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
out = Path(__file__).resolve().parents[1] / "src" / "tunelab" / "resources"


def bucket(text: str) -> str:
    return "short" if len(text) < 100 else "medium" if len(text) < 400 else "long"


rows = [json.loads(l) for l in (shared / "instructions_en" / "user_oriented_instructions.jsonl").open(encoding="utf-8")]
with (out / "qa_en_instructions.csv").open("w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["question", "answer", "category", "difficulty"])
    for r in rows:
        inst = r["instances"][0]
        q = r["instruction"].strip() + (("\n\n" + inst["input"].strip()) if inst["input"].strip() else "")
        w.writerow([q, inst["output"].strip(), r["motivation_app"], bucket(inst["output"].strip())])

names = {"0": "daily", "1": "breakup", "2": "love"}
with (shared / "qa_ko_chatbot" / "ChatbotData.csv").open(encoding="utf-8") as f:
    ko = list(csv.DictReader(f))
rng = random.Random(1234)
picked = []
for label in names:
    group = [r for r in ko if r["label"].strip() == label]
    picked += rng.sample(group, 200)
with (out / "qa_ko_chatbot_sample.csv").open("w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["question", "answer", "category"])
    for r in picked:
        w.writerow([r["Q"], r["A"], names[r["label"].strip()]])
