"""Generation speed: one-prompt-at-a-time `model.generate` vs tunelab's GenerationEngine (batched, KV cache).

Same model (packaged SmolLM2-135M-Instruct, fp32), same prompts (instructions_en, chat template),
greedy decoding, same max_new_tokens. Prints generated tokens/s for both, the ratio, peak RSS and
how many completions are identical (batched left-padded decoding may differ in the last float bits).

    HF_HUB_OFFLINE=1 python bench/bench_generate.py                 # 16 prompts x 64 new tokens
    HF_HUB_OFFLINE=1 python bench/bench_generate.py --prompts 32 --new-tokens 128
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_speed import DATA  # noqa: E402


def load_prompts(n: int, tokenizer) -> list[str]:
    rows = []
    for line in (DATA / "instructions_en" / "user_oriented_instructions.jsonl").open(encoding="utf-8"):
        r = json.loads(line)
        inst = r["instances"][0]
        q = r["instruction"] + ("\n\n" + inst["input"] if inst["input"].strip() else "")
        rows.append(tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                  add_generation_prompt=True))
    return rows[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    import torch

    from tunelab.config.schema import GenerationConfig, ModelConfig
    from tunelab.inference.engine import GenerationEngine, _count_until_stop
    from tunelab.models.hardware import detect_hardware
    from tunelab.models.loading import load_model, load_tokenizer

    model_cfg = ModelConfig(name_or_path=args.model, dtype="float32")
    tokenizer = load_tokenizer(model_cfg)
    hardware = detect_hardware(model_cfg)
    model = load_model(model_cfg, "causal_lm", hardware, tokenizer=tokenizer, for_training=False).eval()
    prompts = load_prompts(args.prompts, tokenizer)
    gen_cfg = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, repetition_penalty=1.0,
                               batch_size=args.batch_size)
    engine = GenerationEngine(model, tokenizer, gen_cfg)
    kwargs = engine._generate_kwargs()
    stops = kwargs["eos_token_id"] + [tokenizer.pad_token_id]

    # Baseline: what a user writes first — one prompt at a time, plain generate, fp32.
    singles, single_tokens = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(hardware.device)
            new = model.generate(**enc, **kwargs)[0, enc["input_ids"].shape[1]:]
            single_tokens += _count_until_stop(new, stops)
            singles.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    single_s = time.perf_counter() - start

    start = time.perf_counter()
    batched = engine.generate(prompts)
    batched_s = time.perf_counter() - start
    batched_tokens = engine.stats.new_tokens

    same = sum(a == b for a, b in zip(singles, batched))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"{hardware.describe()}; {len(prompts)} prompts x <= {args.new_tokens} new tokens, greedy")
    print(f"{'one at a time, fp32 generate':40s} {single_tokens / single_s:8.1f} tok/s  ({single_tokens} tokens, {single_s:.1f}s)")
    print(f"{'tunelab GenerationEngine (batched)':40s} {batched_tokens / batched_s:8.1f} tok/s  ({batched_tokens} tokens, {batched_s:.1f}s)")
    print(f"speed-up: {(batched_tokens / batched_s) / (single_tokens / single_s):.2f}x; "
          f"identical completions: {same}/{len(prompts)}; peak RSS {rss:.2f} GB")


if __name__ == "__main__":
    main()
