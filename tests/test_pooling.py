"""Encoder pooling for classification heads (`model.pooling`) and the trainer's own classification loss
(label smoothing, a task's `head_logits`)."""
import json

import pytest
import torch

from tunelab.config.schema import ModelConfig
from tunelab.errors import UserError
from tunelab.models.hardware import detect_hardware
from tunelab.models.loading import classification_pooling, load_model, load_tokenizer
from tunelab.models.pooling import apply_pooling, resolve_pooling, trained_pooling

MINILM = ModelConfig(name_or_path="all-minilm-l6-v2", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_tokenizer(MINILM)


def _minilm(pooling: str, num_labels: int = 4):
    torch.manual_seed(0)
    config = MINILM.model_copy(update={"pooling": pooling})
    return load_model(config, "sequence_classification", detect_hardware(config), {"num_labels": num_labels},
                      for_training=False, dtype=torch.float32).eval()


def test_auto_pooling_follows_the_sentence_transformers_folder(tmp_path):
    assert classification_pooling(MINILM) == "mean"  # the packaged MiniLM declares mean pooling
    assert resolve_pooling("auto", tmp_path) == "native"  # a plain folder: the model's own head
    assert resolve_pooling("native", tmp_path) == "native"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert trained_pooling(tmp_path) == "cls" and resolve_pooling("auto", tmp_path) == "native"


def test_mean_pooling_is_the_masked_mean_and_ignores_padding(minilm_tokenizer):
    model = _minilm("mean")
    texts = ["card not working", "I was charged twice for the same purchase at a shop yesterday, why?"]
    batch = minilm_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = model.classifier((hidden * mask).sum(1) / mask.sum(1))
        alone = model(**minilm_tokenizer(texts[:1], return_tensors="pt")).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[:1], alone, atol=1e-5, rtol=1e-5)  # padding does not move the short row
    native = _minilm("native")
    with torch.no_grad():
        assert not torch.allclose(native(**batch).logits, logits, atol=1e-3)  # CLS -> pooler: another reading
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())  # unused: frozen (DDP-safe)


def test_mean_pooling_on_a_decoder_is_one_clear_error(tiny_llama):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)
    with pytest.raises(UserError, match="model.pooling: mean needs an encoder with a pooler"):
        apply_pooling(model, "mean")
    apply_pooling(model, "native")  # the decoder's own last-token head stays


def test_trainer_classification_loss_smooths_labels_and_uses_the_task_head(tmp_path, minilm_tokenizer):
    from transformers import TrainingArguments

    from tunelab.training.trainer import TunelabTrainer

    model = _minilm("mean", num_labels=3)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    batch = dict(minilm_tokenizer(["a", "bb cc", "dd ee ff"], padding=True, return_tensors="pt"),
                 labels=torch.tensor([0, 2, 1]))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for smoothing in (0.0, 0.2):
        trainer = TunelabTrainer(model=model, args=args, head_logits=lambda x: x, label_smoothing=smoothing)
        with torch.no_grad():
            loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
        expected = torch.nn.functional.cross_entropy(logits, batch["labels"], label_smoothing=smoothing)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        torch.testing.assert_close(outputs.logits, logits)
    # A task head that maps the model's rows to other class logits is what the loss and evaluation see.
    flip = TunelabTrainer(model=model, args=args, head_logits=lambda x: x.flip(-1))
    with torch.no_grad():
        loss, outputs = flip.compute_loss(model, dict(batch), return_outputs=True)
    torch.testing.assert_close(outputs.logits, logits.flip(-1))
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.flip(-1), batch["labels"]).item(),
                                        rel=1e-5)


def test_a_run_saved_before_pooling_existed_keeps_its_native_head(tmp_path):
    from pathlib import Path

    from tunelab.api import load_task

    example = Path(__file__).resolve().parents[1] / "examples" / "classify_banking77.yaml"
    old_run = "".join(line for line in example.read_text(encoding="utf-8").splitlines(keepends=True)
                      if not line.lstrip().startswith("pooling:"))
    (tmp_path / "config.yaml").write_text(old_run, encoding="utf-8")  # as saved before model.pooling existed
    config, _ = load_task(tmp_path)
    assert config.model.pooling == "native"
    text = old_run.replace("model:\n", "model:\n  pooling: mean\n", 1)
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    assert load_task(tmp_path)[0].model.pooling == "mean"  # what a new run saved
