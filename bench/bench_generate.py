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
from types import SimpleNamespace

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
    p.add_argument("--same-threads-baseline", action="store_true",
                   help="also time the baseline with the thread count tunelab picked")
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
    stop_ids = GenerationEngine._stop_ids(SimpleNamespace(tokenizer=tokenizer, model=model))
    kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids)
    stops = stop_ids + [tokenizer.pad_token_id]

    def one_at_a_time():
        """What a user writes first: one prompt at a time, plain generate, fp32."""
        texts, tokens = [], 0
        start = time.perf_counter()
        with torch.inference_mode():
            for prompt in prompts:
                enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(hardware.device)
                new = model.generate(**enc, **kwargs)[0, enc["input_ids"].shape[1]:]
                tokens += _count_until_stop(new, stops)
                texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        return texts, tokens, time.perf_counter() - start

    default_threads = torch.get_num_threads()
    singles, single_tokens, single_s = one_at_a_time()
    engine = GenerationEngine(model, tokenizer, gen_cfg)  # on CPU this calibrates the thread count
    if args.same_threads_baseline and torch.get_num_threads() != default_threads:
        _, t2, s2 = one_at_a_time()
        print(f"(one at a time with tunelab's {torch.get_num_threads()} thread(s): {t2 / s2:.1f} tok/s)")

    start = time.perf_counter()
    batched = engine.generate(prompts)
    batched_s = time.perf_counter() - start
    batched_tokens = engine.stats.new_tokens

    same = sum(a == b for a, b in zip(singles, batched))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"{hardware.describe()}; {len(prompts)} prompts x <= {args.new_tokens} new tokens, greedy")
    print(f"{f'one at a time, fp32 generate ({default_threads} thr)':40s} {single_tokens / single_s:8.1f} tok/s  ({single_tokens} tokens, {single_s:.1f}s)")
    print(f"{f'tunelab GenerationEngine ({torch.get_num_threads()} thr)':40s} {batched_tokens / batched_s:8.1f} tok/s  ({batched_tokens} tokens, {batched_s:.1f}s)")
    print(f"speed-up: {(batched_tokens / batched_s) / (single_tokens / single_s):.2f}x; "
          f"identical completions: {same}/{len(prompts)}; peak RSS {rss:.2f} GB")


if __name__ == "__main__":
    main()
