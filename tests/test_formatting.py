"""Loss masking: decode exactly the tokens that carry loss and compare with the answers."""
import pandas as pd
import torch

from tunelab.config import build_config
from tunelab.tasks import get_task
from tunelab.tasks.formatting import IGNORE_INDEX
from tunelab.data.collate import CausalLMCollator


def trained_text(example, tokenizer):
    ids = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    return tokenizer.decode(ids)


def make_task(**task):
    cfg = build_config({"task": {"name": "sft", **task}})
    return get_task("sft")(cfg)


def test_conversational_trains_only_the_answer_and_end_of_turn(smollm_tokenizer):
    task = make_task()
    frame = pd.DataFrame({"question": ["What is the capital of France?"], "answer": ["Paris is the capital."]})
    [example] = task.encode(frame, smollm_tokenizer, max_length=256)
    assert trained_text(example, smollm_tokenizer) == "Paris is the capital.<|im_end|>"
    full = smollm_tokenizer.decode(example["input_ids"])
    assert "What is the capital of France?" in full and "<|im_start|>assistant\n" in full


def test_multi_turn_messages_train_every_assistant_turn_and_nothing_else(smollm_tokenizer):
    task = make_task()
    messages = [{"role": "system", "content": "Be short."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    [example] = task.encode(pd.DataFrame({"messages": [messages]}), smollm_tokenizer, max_length=256)
    assert trained_text(example, smollm_tokenizer) == "Hello!<|im_end|>4<|im_end|>"


def test_category_system_prompt_is_used_and_not_trained(smollm_tokenizer):
    task = make_task(system_prompt="General helper.", category_system_prompts={"law": "You are a lawyer."})
    frame = pd.DataFrame({"question": ["q1", "q2"], "answer": ["a1", "a2"], "category": ["law", "other"]})
    law, other = task.encode(frame, smollm_tokenizer, max_length=256)
    assert "You are a lawyer." in smollm_tokenizer.decode(law["input_ids"])
    assert "General helper." in smollm_tokenizer.decode(other["input_ids"])
    assert trained_text(law, smollm_tokenizer) == "a1<|im_end|>"


def test_prompt_completion_format_masks_the_prompt(smollm_tokenizer):
    task = make_task(format="prompt_completion")
    frame = pd.DataFrame({"question": ["Name a color."], "answer": [" Blue."]})
    [example] = task.encode(frame, smollm_tokenizer, max_length=128)
    assert smollm_tokenizer.decode(example["input_ids"]).startswith("### Question:\nName a color.\n\n### Answer:\n")
    assert trained_text(example, smollm_tokenizer) == " Blue." + smollm_tokenizer.eos_token


def test_truncation_keeps_partial_answer_and_drops_examples_without_one(smollm_tokenizer):
    task = make_task()
    frame = pd.DataFrame({"question": ["short", "word " * 300], "answer": ["one two three four five", "x"]})
    examples = task.encode(frame, smollm_tokenizer, max_length=40)
    assert len(examples) == 1  # the second's answer lies beyond 40 tokens: nothing to learn, dropped
    assert len(examples[0]["input_ids"]) <= 40


def test_collator_pads_right_and_masks_padding(smollm_tokenizer):
    collate = CausalLMCollator(pad_token_id=smollm_tokenizer.pad_token_id)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, smollm_tokenizer.pad_token_id, smollm_tokenizer.pad_token_id]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long
