"""Linear-probe head initialisation (LP-FT, `task.head_init: probe`) on the real MiniLM and banking77 rows."""
import numpy as np
import pandas as pd
import pytest
import torch

from tunelab.config import build_config
from tunelab.models import detect_hardware, load_model, load_tokenizer
from tunelab.models.forward import predict_probabilities
from tunelab.tasks.classify import ClassifyTask
from tunelab.training.head_init import classification_head, probe_head


def _banking(shared_data, n_classes=8, per_class=24):
    rows = pd.read_csv(shared_data / "classification_banking77" / "train.csv").rename(columns={"category": "label"})
    keep = sorted(rows["label"].unique())[:n_classes]
    rows = rows[rows["label"].isin(keep)].groupby("label").head(per_class).sample(frac=1.0, random_state=0)
    half = len(rows) // 2
    return rows.iloc[:half], rows.iloc[half:]


def test_probe_starts_the_head_where_logistic_regression_ends(shared_data):
    config = build_config({"task": {"name": "classify"}, "model": {"name_or_path": "all-minilm-l6-v2", "device": "cpu",
                                                                    "dtype": "float32"}})
    task = ClassifyTask(config)
    train, held_out = _banking(shared_data)
    task.fit(train)
    tokenizer = load_tokenizer(config.model)
    torch.manual_seed(0)
    model = load_model(config.model, task.head, detect_hardware(config.model), task.head_kwargs(), tokenizer=tokenizer)
    train_examples, held_examples = task.encode(train, tokenizer, 64), task.encode(held_out, tokenizer, 64)
    labels = np.array([e["labels"] for e in held_examples])
    before = predict_probabilities(model, held_examples, task.collate(tokenizer)).argmax(1)
    weights_before = classification_head(model, len(task.classes)).weight.detach().clone()
    model.train()  # as the recipe hands it over
    probed = probe_head(model, train_examples, task.collate(tokenizer), len(task.classes))
    assert model.training  # still in training mode for the Trainer
    after = predict_probabilities(model, held_examples, task.collate(tokenizer)).argmax(1)
    assert probed is not None and probed["probe_train_accuracy"] > 0.9
    assert (before == labels).mean() < 0.4  # a random head: near chance (1/8)
    assert (after == labels).mean() > 0.7  # the probed head already separates unseen rows
    assert not torch.equal(weights_before, classification_head(model, len(task.classes)).weight)


def test_a_decoder_head_is_probed_at_the_last_real_token(tiny_llama, smollm_tokenizer):
    """A decoder's `score` sees every position and transformers reads the logits at the last non-pad token: the
    probe must fit exactly those states, so the model's own predictions reproduce the probe's train accuracy."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3)
    pad = model.config.pad_token_id
    assert pad is not None and model.score.bias is None
    rng = np.random.default_rng(0)
    examples = [{"input_ids": rng.integers(10, 5000, size=int(rng.integers(3, 12))).tolist(), "labels": i % 3}
                for i in range(24)]

    def collate(rows):  # right padding with the pad id, as tunelab's classification collator does
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
        return {"input_ids": ids, "attention_mask": ids.ne(pad).long()}

    before = model.score.weight.detach().clone()
    probed = probe_head(model, examples, collate, 3)
    assert probed is not None and not torch.equal(before, model.score.weight)
    with torch.no_grad():
        predicted = model(**collate(examples)).logits.argmax(-1).numpy()
    accuracy = float((predicted == np.array([e["labels"] for e in examples])).mean())
    assert probed["probe_train_accuracy"] > 0.6  # 32-dim random features still separate 24 rows fairly well
    assert accuracy == pytest.approx(probed["probe_train_accuracy"])


def test_head_init_is_a_validated_option():
    from tunelab.errors import UserError

    assert build_config({"task": {"name": "classify"}}).task.head_init == "probe"
    with pytest.raises(UserError, match="head_init"):
        build_config({"task": {"name": "classify", "head_init": "lp"}})
