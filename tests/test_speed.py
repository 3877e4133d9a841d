"""The fast training path must give the same numbers as the plain one.

Speed itself is measured by bench/, never here. These tests pin what the speed levers
must not change: the loss and its gradients, per-example isolation inside a padded
batch, and a deterministic, resumable, complete batch order.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tunelab.data.collate import CausalLMCollator
from tunelab.training.losses import causal_lm_loss, kept_targets, linear_cross_entropy, supervised_positions
from tunelab.training.microbatch import split_by_token_budget
from tunelab.training.sampler import LengthBucketSampler, example_lengths
from tunelab.training.trainer import TunelabTrainer, _same_logits, _verified_backbone_and_head

PAD = 0


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=PAD, tie_word_embeddings=True)
    return LlamaForCausalLM(config).float()


def make_examples(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(4, 40, (1,), generator=g))
        ids = torch.randint(1, 97, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 1, (1,), generator=g))
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return examples


def training_args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                report_to=[], use_cpu=True, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=7)
    base.update(kw)
    return TrainingArguments(**base)


# -- sampler ----------------------------------------------------------------------------------
def test_bucket_sampler_is_a_deterministic_permutation_per_epoch():
    lengths = [int(x) for x in torch.randint(1, 500, (203,), generator=torch.Generator().manual_seed(1))]
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=3)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(203))  # every example exactly once
    assert list(LengthBucketSampler(lengths, batch_size=8, seed=3)) == epoch0  # same seed, same order
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch1) == list(range(203)) and epoch1 != epoch0
    sampler.set_epoch(0)
    assert list(sampler) == epoch0  # resume replays epoch 0 exactly


def test_bucket_sampler_batches_have_similar_lengths_and_longest_first():
    g = torch.Generator().manual_seed(2)
    lengths = [int(x) for x in torch.randint(10, 512, (400,), generator=g)]
    batches = LengthBucketSampler(lengths, batch_size=8, seed=0).batches()
    padded = sum(8 * max(lengths[i] for i in b) for b in batches[:-1])
    real = sum(lengths[i] for b in batches[:-1] for i in b)
    assert real / padded > 0.95  # random batches of this data waste ~35%
    assert max(lengths[i] for i in batches[0]) == max(lengths)
    assert len(batches[-1]) == 400 % 8 or len(batches[-1]) == 8
    assert all(len(b) == 8 for b in batches[:-1])


# -- loss equivalence ---------------------------------------------------------------------
def test_selective_logits_loss_and_grads_equal_transformers_loss():
    model = tiny_llama()
    batch = CausalLMCollator(PAD)(make_examples(6))
    ref = model(**batch).loss
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))

    keep = supervised_positions(batch["labels"])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    assert out.logits.shape == (int(keep.sum()), 97)  # only labelled positions hit the LM head
    fast = causal_lm_loss(out.logits, batch["labels"], keep=keep, chunk_size=7)  # chunks of odd size
    fast_grads = torch.autograd.grad(fast, list(model.parameters()))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_nothing_leaks_across_examples_in_a_padded_batch():
    model = tiny_llama().eval()
    examples = make_examples(5, seed=4)
    batch = CausalLMCollator(PAD)(examples)
    keep = supervised_positions(batch["labels"])
    with torch.no_grad():
        batched = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
        alone = []
        for e in examples:
            one = CausalLMCollator(PAD)([e])
            k = supervised_positions(one["labels"])
            alone.append(model(**{k_: v for k_, v in one.items() if k_ != "labels"}, logits_to_keep=k).logits)
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear_cross_entropy_equals_linear_then_cross_entropy(with_bias):
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(37, 16, generator=g) * 3).requires_grad_()  # large logits: tests the max-shift
    weight = torch.randn(50, 16, generator=g).requires_grad_()
    bias = torch.randn(50, generator=g).requires_grad_() if with_bias else None
    targets = torch.randint(0, 50, (37,), generator=g)
    params = [hidden, weight] + ([bias] if with_bias else [])
    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum") / 5
    fused = linear_cross_entropy(hidden, weight, bias, targets, chunk_size=8) / 5  # 5 chunks, the last short
    torch.testing.assert_close(fused, ref)
    for a, b in zip(torch.autograd.grad(fused, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # evaluation: the value alone, no gradient buffers
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, bias, targets) / 5, ref)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))


@pytest.mark.parametrize("adapter", [None, _lora], ids=["full", "lora"])
def test_trainer_fast_paths_match_plain_trainer(tmp_path, adapter):
    examples = make_examples(8, seed=5)
    batch = CausalLMCollator(PAD)(examples)
    n = batch["labels"][:, 1:].ne(-100).sum()
    results = []
    for path in ("fused", "selective", "plain"):
        model = tiny_llama() if adapter is None else adapter(tiny_llama())
        trainer = TunelabTrainer(model=model, args=training_args(tmp_path), data_collator=CausalLMCollator(PAD),
                                 train_dataset=examples, selective_logits=path != "plain",
                                 fused_head_loss=path == "fused")
        assert trainer._use_selective_logits(model.train(), batch) is (path != "plain")
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
        assert (trainer._fused_head(model, batch, None) is not None) is (path == "fused")
        trainable = [p for p in model.parameters() if p.requires_grad]
        results.append((loss.detach(), torch.autograd.grad(loss, trainable)))
    for loss, grads in results[:2]:
        torch.testing.assert_close(loss, results[2][0], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, results[2][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_head_is_decided_on_the_first_batch_with_labels(tmp_path):
    model = tiny_llama().train()
    examples = make_examples(4, seed=3)
    batch = CausalLMCollator(PAD)(examples)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    trainer = TunelabTrainer(model=model, args=training_args(tmp_path), data_collator=CausalLMCollator(PAD),
                             train_dataset=examples)
    no_labels = torch.zeros_like(batch["labels"], dtype=torch.bool)
    assert trainer._fused_head(model, inputs, no_labels) is None and id(model) not in trainer._fused_heads
    backbone, head = trainer._fused_head(model, inputs, supervised_positions(batch["labels"]))
    assert head is model.lm_head and backbone is model.model and model.training  # train mode restored


def _softcapped_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, pad_token_id=PAD, final_logit_softcapping=0.5))


def _llama_scaling_its_logits():
    from transformers import LlamaForCausalLM

    class ScaledLlamaForCausalLM(LlamaForCausalLM):  # a model that changes logits after the head, with no config flag
        def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, **kwargs):
            out = super().forward(input_ids, attention_mask, logits_to_keep=logits_to_keep, **kwargs)
            out.logits = out.logits * 2
            return out

    return ScaledLlamaForCausalLM(tiny_llama().config)


@pytest.mark.parametrize("make", [_softcapped_gemma2, _llama_scaling_its_logits], ids=["softcap", "custom"])
def test_a_head_whose_logits_are_transformed_is_not_fused(tmp_path, make):
    torch.manual_seed(0)
    model = make().train()
    examples = make_examples(4, seed=2)
    batch = CausalLMCollator(PAD)(examples)
    trainer = TunelabTrainer(model=model, args=training_args(tmp_path), data_collator=CausalLMCollator(PAD),
                             train_dataset=examples)
    loss = trainer.compute_loss(model, dict(batch))
    assert trainer._fused_heads[id(model)] is None  # head(hidden) is not the model's logits
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(loss, causal_lm_loss(logits, batch["labels"]), rtol=1e-5, atol=1e-6)


def test_custom_loss_or_metrics_take_the_plain_path(tmp_path):
    examples = make_examples(4)
    batch = CausalLMCollator(PAD)(examples)
    model = tiny_llama()
    custom = TunelabTrainer(model=model, args=training_args(tmp_path), train_dataset=examples,
                            data_collator=CausalLMCollator(PAD), compute_loss_func=lambda o, l, **k: o.logits.sum())
    assert not custom._use_selective_logits(model.train(), batch)
    plain = TunelabTrainer(model=model, args=training_args(tmp_path), train_dataset=examples,
                           data_collator=CausalLMCollator(PAD))
    assert not plain._use_selective_logits(model.eval(), batch)  # eval that returns logits: full logits
    plain._loss_only_prediction = True
    assert plain._use_selective_logits(model.eval(), batch)


def test_split_by_token_budget_keeps_every_row_once_and_trims_padding():
    batch = CausalLMCollator(PAD)(make_examples(7, seed=8))
    chunks = split_by_token_budget(batch, budget=60)
    lengths = batch["attention_mask"].sum(1).tolist()
    seen = sorted(c["attention_mask"].sum(1).tolist() for c in chunks)
    assert sorted(x for c in seen for x in c) == sorted(lengths)
    for c in chunks:
        assert c["input_ids"].shape == c["labels"].shape == c["attention_mask"].shape
        assert c["input_ids"].shape[1] == c["attention_mask"].sum(1).max()  # no all-padding columns
        assert c["input_ids"].numel() <= 60 or c["input_ids"].shape[0] == 1


def test_micro_batched_training_step_gives_the_same_gradients(tmp_path):
    examples = make_examples(8, seed=9)
    batch = CausalLMCollator(PAD)(examples)
    n = batch["labels"][:, 1:].ne(-100).sum()
    grads, losses = [], []
    for budget in (None, 50):
        model = tiny_llama()
        trainer = TunelabTrainer(model=model, args=training_args(tmp_path), data_collator=CausalLMCollator(PAD),
                                 train_dataset=examples, token_budget=budget)
        assert (trainer._micro_batches(model, batch, n) is not None) is (budget is not None)
        losses.append(trainer.training_step(model, dict(batch), num_items_in_batch=n))
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# -- Trainer integration --------------------------------------------------------------------
def _train(tmp_path, examples, resume=None, **kw):
    model = tiny_llama()
    args = training_args(tmp_path, num_train_epochs=2, save_strategy="steps", save_steps=3, **kw)
    trainer = TunelabTrainer(model=model, args=args, data_collator=CausalLMCollator(PAD), train_dataset=examples)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model


def test_trainer_uses_buckets_and_resume_replays_the_same_batches(tmp_path):
    examples = make_examples(20, seed=6)
    trainer, full = _train(tmp_path / "a", examples)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthBucketSampler) and sampler.batch_size == 4 and sampler.seed == 7
    # 5 steps/epoch, checkpoints every 3: resuming from step 6 (epoch 2, mid-epoch) must land on the same weights.
    _, resumed = _train(tmp_path / "a", examples, resume=str(tmp_path / "a" / "checkpoint-6"))
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    eval_loss = TunelabTrainer(model=full, args=training_args(tmp_path / "b"), data_collator=CausalLMCollator(PAD),
                               eval_dataset=examples).evaluate()["eval_loss"]
    assert 0 < eval_loss < 4.57  # trained below the uniform-guess loss ln(97)


@pytest.mark.parametrize("first_run_fused", [True, False], ids=["fused", "unfused"])
def test_resume_repeats_the_fused_head_decision_of_the_checkpoint(tmp_path, monkeypatch, first_run_fused):
    import tunelab.training.trainer as trainer_module

    def decided(trainer):
        return {choice is not None for choice in trainer._fused_heads.values()}

    verify = trainer_module._verified_backbone_and_head
    never = lambda model, inputs, keep: None  # a check that comes out "not equal" (e.g. bf16 noise)
    examples = make_examples(12, seed=6)  # 3 steps/epoch, 2 epochs, checkpoints at steps 3 and 6
    monkeypatch.setattr(trainer_module, "_verified_backbone_and_head", verify if first_run_fused else never)
    first, _ = _train(tmp_path, examples)
    assert decided(first) == {first_run_fused}
    record = json.loads((tmp_path / "checkpoint-3" / "tunelab_trainer.json").read_text())
    assert record == {"fused_head_loss": first_run_fused}
    # Re-checking after the resume would now come out the other way; the checkpoint's decision must win.
    monkeypatch.setattr(trainer_module, "_verified_backbone_and_head", never if first_run_fused else verify)
    resumed, _ = _train(tmp_path, examples, resume=str(tmp_path / "checkpoint-3"))
    assert decided(resumed) == {first_run_fused}
    assert json.loads((tmp_path / "checkpoint-6" / "tunelab_trainer.json").read_text()) == record


def _plain_trainer_in_bucket_order(**kwargs):
    """transformers' Trainer with tunelab's batch order: the comparison is of the maths, not the shuffling."""
    from transformers import Trainer

    class PlainBucketed(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return LengthBucketSampler(example_lengths(dataset), self._train_batch_size, seed=self.args.seed)

    return PlainBucketed(**kwargs)


def test_training_with_accumulation_and_micro_batches_matches_plain_trainer(tmp_path):
    # fp32, 3 optimizer steps of 2 accumulated batches of 4, most over the 60-token budget (run as
    # micro-batches), fused head + loss: the weights equal plain transformers' up to float summation order
    # (measured <1e-8 here, weights moved ~1e-2; tolerance 1e-6 abs + 1e-5 rel). SGD, because its update is linear in the
    # gradient: Adam's first steps are ~lr * sign(grad), so a 1e-9 difference in a near-zero gradient
    # could flip a weight by 2 * lr and the test would measure Adam, not tunelab.
    examples = make_examples(24, seed=11)
    args = dict(gradient_accumulation_steps=2, max_steps=3, optim="sgd", learning_rate=0.1)
    fast_model, plain_model = tiny_llama(), tiny_llama()
    fast = TunelabTrainer(model=fast_model, args=training_args(tmp_path / "fast", **args),
                          data_collator=CausalLMCollator(PAD), train_dataset=examples, token_budget=60)
    split = []
    micro_batches = fast._micro_batches
    fast._micro_batches = lambda *a: split.append(micro_batches(*a)) or split[-1]
    fast.train()
    plain = _plain_trainer_in_bucket_order(model=plain_model, args=training_args(tmp_path / "plain", **args),
                                           data_collator=CausalLMCollator(PAD), train_dataset=examples)
    plain.train()
    assert fast.state.global_step == plain.state.global_step == 3
    assert len(split) == 6 and sum(chunks is not None for chunks in split) >= 4  # most batches were split
    assert list(fast._fused_heads.values())[0] is not None  # the fused head + loss ran
    moved = 0.0
    for (name, a), (_, b), (_, start) in zip(fast_model.named_parameters(), plain_model.named_parameters(),
                                             tiny_llama().named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((b - start).abs().max()))
    assert moved > 1e-3  # the weights did train: equal, not merely unchanged


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "selective"])
def test_loss_only_evaluation_matches_plain_trainer(tmp_path, fused):
    from transformers import Trainer

    examples = make_examples(10, seed=12)  # batches of 4, 4, 2
    fast = TunelabTrainer(model=tiny_llama(), args=training_args(tmp_path), data_collator=CausalLMCollator(PAD),
                          eval_dataset=examples, fused_head_loss=fused)
    used = []
    use = fast._use_selective_logits
    fast._use_selective_logits = lambda *a: used.append(use(*a)) or used[-1]
    plain = Trainer(model=tiny_llama(), args=training_args(tmp_path), data_collator=CausalLMCollator(PAD),
                    eval_dataset=examples)
    fast_loss, plain_loss = fast.evaluate()["eval_loss"], plain.evaluate()["eval_loss"]
    assert used and all(used)  # every eval batch took the selective-logits path
    assert [choice is not None for choice in fast._fused_heads.values()] == ([True] if fused else [])
    assert fast_loss == pytest.approx(plain_loss, rel=1e-6, abs=1e-6)


def test_classification_examples_are_bucketed_and_use_the_head_loss(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=PAD, num_labels=3))
    examples = [{"input_ids": e["input_ids"], "labels": i % 3} for i, e in enumerate(make_examples(12))]

    def collate(batch):
        n = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [PAD] * (n - len(e["input_ids"])) for e in batch])
        return {"input_ids": ids, "attention_mask": (ids != PAD).long(), "labels": torch.tensor([e["labels"] for e in batch])}

    trainer = TunelabTrainer(model=model, args=training_args(tmp_path, max_steps=2), data_collator=collate,
                             train_dataset=examples)
    assert isinstance(trainer._get_train_sampler(), LengthBucketSampler)
    assert not trainer._use_selective_logits(model, collate(examples[:4]))
    assert trainer.train().training_loss > 0


@pytest.mark.e2e
def test_selective_logits_on_real_smollm2(smollm_tokenizer):
    from tunelab.config import ModelConfig
    from tunelab.models.hardware import detect_hardware
    from tunelab.models.loading import load_model
    from tunelab.tasks.formatting import render_conversation, tokenize_rendered

    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", dtype="float32", device="cpu")
    model = load_model(cfg, "causal_lm", detect_hardware(cfg), tokenizer=smollm_tokenizer)
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("What is 2+2?", "4."), ("Name a colour.", "Blue is a colour I like a lot. " * 8)]]
    examples = [tokenize_rendered(render_conversation(c, smollm_tokenizer), smollm_tokenizer, 128) for c in convs]
    batch = CausalLMCollator(smollm_tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        ref = model(**batch).loss
        keep = supervised_positions(batch["labels"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    torch.testing.assert_close(causal_lm_loss(logits, batch["labels"], keep=keep), ref, rtol=2e-4, atol=2e-4)
    # SmolLM2's head is a plain tied Linear: the fused head + loss is taken, with the same loss.
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    widths = []
    spy = model.model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        backbone, head = _verified_backbone_and_head(model, inputs, keep)
    finally:
        spy.remove()
    # The check runs over the columns up to a few labelled positions, not the batch's full width (a causal LM's
    # logits do not depend on later columns): on a long first batch it cost ~3 s before.
    first = int(keep.any(0).nonzero()[0])
    assert widths and max(widths) == first + 16 < batch["input_ids"].shape[1]
    with torch.no_grad():
        hidden = backbone(**inputs).last_hidden_state[keep]
        targets = kept_targets(batch["labels"], keep)
        fused = linear_cross_entropy(hidden, head.weight, head.bias, targets) / targets.numel()
    torch.testing.assert_close(fused, ref, rtol=2e-4, atol=2e-4)


def test_fused_head_check_allows_bf16_rounding_but_not_a_changed_head():
    """bf16 logits one unit of the last place apart (another GEMM shape) still count as the same head; a logit scale
    or softcapping (what the check exists to catch) does not, nor does a 1-ULP-sized change in fp32."""
    logits = torch.linspace(-24, 24, 4096).reshape(2, 2048)
    bf16 = logits.bfloat16()
    one_ulp = (bf16.view(torch.int16) + 1).view(torch.bfloat16)  # the next bf16 value, away from zero
    assert not torch.equal(bf16, one_ulp) and _same_logits(bf16, one_ulp)
    assert not _same_logits(bf16, (bf16.float() * 0.97).bfloat16())  # a logit scale
    assert not _same_logits(bf16, (30 * torch.tanh(bf16.float() / 30)).bfloat16())  # softcapping at 30
    assert _same_logits(logits, logits + 1e-5) and not _same_logits(logits, logits * 1.005)
    assert not _same_logits(logits, logits[:, :10])


# -- CPU kernels: math attention for short bf16 batches ------------------------------------------------------
def test_short_bf16_batches_on_cpu_use_the_math_attention_kernel(tmp_path):
    from torch.backends.cuda import flash_sdp_enabled

    from tunelab.models.hardware import SHORT_ATTENTION

    model = _lora(tiny_llama())
    trainer = TunelabTrainer(model=model, args=training_args(tmp_path, bf16=True), data_collator=CausalLMCollator(PAD),
                             train_dataset=make_examples(4))
    short = {"input_ids": torch.ones(2, SHORT_ATTENTION - 1, dtype=torch.long)}
    long = {"input_ids": torch.ones(2, SHORT_ATTENTION, dtype=torch.long)}
    assert flash_sdp_enabled()
    with trainer.attention_kernels(short):
        assert not flash_sdp_enabled()  # sdpa_kernel([MATH]) switched the fused kernels off
    assert flash_sdp_enabled()
    with trainer.attention_kernels(long):
        assert flash_sdp_enabled()
    fp32 = TunelabTrainer(model=_lora(tiny_llama()), args=training_args(tmp_path), data_collator=CausalLMCollator(PAD),
                          train_dataset=make_examples(4))
    with fp32.attention_kernels(short):
        assert flash_sdp_enabled()  # fp32 keeps torch's choice: its fused kernel is the faster one there


def test_math_and_fused_attention_give_the_same_bf16_loss_and_gradients():
    """Forced bf16 (emulated, slow but correct on CPUs without AVX512-BF16): the two kernels agree to bf16 rounding."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch = CausalLMCollator(PAD)(make_examples(6, seed=2))
    results = []
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        model = tiny_llama().bfloat16()
        with sdpa_kernel([backend]):
            loss = model(**batch).loss
        results.append((loss.detach().float(), [g.float() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-2, atol=2e-2)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0.1, atol=2e-2)


def test_lora_skips_the_input_cast_under_autocast_and_nothing_changes(tmp_path):
    """A frozen bf16 base with fp32 LoRA weights (tunelab's LoRA default on a bf16 CPU): under autocast peft's cast of
    each adapter's input to fp32 is undone by autocast, so the trainer's hooks skip it: fewer copies, the same loss
    and gradients to the bit. Outside autocast the cast stays (an fp32 forward still works)."""
    from torch.profiler import ProfilerActivity, profile

    batch = CausalLMCollator(PAD)(make_examples(4, seed=4))
    n = batch["labels"][:, 1:].ne(-100).sum()
    results = []
    for mixed in (True, False):
        model = _lora(tiny_llama())
        for name, p in model.named_parameters():
            if "lora_" not in name:
                p.data = p.data.bfloat16()
        trainer = TunelabTrainer(model=model, args=training_args(tmp_path, bf16=mixed),
                                 data_collator=CausalLMCollator(PAD), train_dataset=make_examples(4))
        flags = []
        lora_q = model.base_model.model.model.layers[0].self_attn.q_proj
        lora_q.register_forward_hook(lambda m, a, o: flags.append(m.cast_input_dtype_enabled))
        with profile(activities=[ProfilerActivity.CPU]) as prof, trainer.accelerator.autocast():
            with torch.autocast("cpu", dtype=torch.bfloat16):  # the same autocast for both; only the hooks differ
                loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
        copies = sum(e.count for e in prof.key_averages() if e.key == "aten::copy_")
        assert flags and all(f is not mixed for f in flags)
        lora = [p for name, p in model.named_parameters() if "lora_" in name]
        results.append((loss.detach(), torch.autograd.grad(loss, lora), copies))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert results[0][2] < results[1][2]  # the forward made fewer copies
    # Outside autocast peft's cast is back: an fp32 model's forward runs and the flag is on again.
    model = _lora(tiny_llama())
    TunelabTrainer(model=model, args=training_args(tmp_path, bf16=True), data_collator=CausalLMCollator(PAD),
                   train_dataset=make_examples(4))
    assert torch.isfinite(model(**batch).loss)
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))


# -- regional compilation ----------------------------------------------------------------------------------
def test_compiled_blocks_train_like_the_uncompiled_model(tmp_path):
    """Each decoder layer compiled in place: same loss and LoRA gradients, same parameter names (checkpoints and
    adapters save as before). Compiling two tiny layers takes a while on 2 cores: the one compile test."""
    from tunelab.training.compile import compile_repeated_blocks, repeated_blocks

    batch = CausalLMCollator(PAD)(make_examples(6, seed=8))
    n = batch["labels"][:, 1:].ne(-100).sum()
    results, names = [], []
    for compiled in (False, True):
        model = _lora(tiny_llama())
        if compiled:
            assert [type(b).__name__ for b in repeated_blocks(model)] == ["LlamaDecoderLayer"] * 2
            assert compile_repeated_blocks(model) == 2
        names.append(sorted(model.state_dict()))
        trainer = TunelabTrainer(model=model, args=training_args(tmp_path), data_collator=CausalLMCollator(PAD),
                                 train_dataset=make_examples(4))
        loss = trainer.compute_loss(model.train(), dict(batch), num_items_in_batch=n)
        lora = [p for name, p in model.named_parameters() if "lora_" in name]
        results.append((loss.detach(), torch.autograd.grad(loss, lora)))
    assert names[0] == names[1]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("adapter", [None, _lora], ids=["full", "lora"])
def test_fused_head_runs_in_the_runs_bf16_autocast_like_the_plain_path(tmp_path, adapter):
    """accelerate puts bf16 autocast around the model's forward; the fused head calls the backbone past that
    forward, so it enters the same autocast: the head is verified (not silently dropped) and the loss is the
    plain Trainer's to bf16 rounding. Forced bf16: emulated (slow, correct) on CPUs without AVX512-BF16."""
    from transformers import Trainer

    examples = make_examples(8, seed=6)
    batch = CausalLMCollator(PAD)(examples)
    n = batch["labels"][:, 1:].ne(-100).sum()
    losses = []
    for cls in (TunelabTrainer, Trainer):
        model = tiny_llama() if adapter is None else adapter(tiny_llama())
        trainer = cls(model=model, args=training_args(tmp_path, bf16=True, max_steps=1, learning_rate=0.0),
                      data_collator=CausalLMCollator(PAD), train_dataset=examples)
        trainer.train()  # prepares the model: accelerate wraps its forward in autocast
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model.train(), dict(batch), num_items_in_batch=n))
        if cls is TunelabTrainer:
            assert trainer._fused_decision is True
    torch.testing.assert_close(losses[0].float(), losses[1].float(), rtol=1e-2, atol=1e-2)
