"""Generation speed: one-prompt-at-a-time `model.generate` vs tunelab's GenerationEngine (batched, KV cache).

Same model (packaged SmolLM2-135M-Instruct, fp32), same prompts (instructions_en, chat template),
greedy decoding, same max_new_tokens. Prints generated tokens/s for both, the ratio, peak RSS and
how many completions are identical (batched left-padded decoding may differ in the last float bits).
Then `--rounds` more rounds time the baseline and the default engine back to back and the ratio is also given per
round and as the median (this shared VM's speed drifts within a minute; the baseline alone takes ~40 s).

    HF_HUB_OFFLINE=1 python bench/bench_generate.py                 # 16 prompts x 64 new tokens
    HF_HUB_OFFLINE=1 python bench/bench_generate.py --prompts 32 --new-tokens 128
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_speed import DATA  # noqa: E402
from host import StealMeter, steal_text  # noqa: E402


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
    p.add_argument("--json", help="write the rows (setting, tokens_per_s, peak_rss_gb, ...) to this file")
    p.add_argument("--rounds", type=int, default=2,
                   help="extra rounds re-timing the baseline and the default engine back to back (host drift)")
    p.add_argument("--same-threads-baseline", action="store_true",
                   help="also time the baseline with the thread count tunelab picked")
    args = p.parse_args()

    import torch

    from tunelab.config.schema import GenerationConfig, ModelConfig
    from tunelab.inference.engine import GenerationEngine, _count_until_stop, _length_groups, _packs_prompts
    from tunelab.models.hardware import cpu_flags, detect_hardware
    from tunelab.models.loading import load_model, load_tokenizer, predict_dtype

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
        with torch.inference_mode(), StealMeter() as steal:
            for prompt in prompts:
                enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(hardware.device)
                new = model.generate(**enc, **kwargs)[0, enc["input_ids"].shape[1]:]
                tokens += _count_until_stop(new, stops)
                texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        return texts, tokens, time.perf_counter() - start, steal.pct

    def engine_run(engine, bucketed: bool = True):
        engine.bucketed_prefill = bucketed
        before = engine.stats.new_tokens
        start = time.perf_counter()
        with StealMeter() as steal:
            texts = engine.generate(prompts)
        return texts, engine.stats.new_tokens - before, time.perf_counter() - start, steal.pct

    default_threads = torch.get_num_threads()
    singles, single_tokens, single_s, single_steal = one_at_a_time()
    rows = [("one_at_a_time_fp32", f"one at a time, fp32 generate ({default_threads} thr)", singles, single_tokens,
             single_s, single_steal)]
    # Engines get their own copies: packing swaps the model's linear layers, and the baseline above stays plain.
    unpacked = GenerationEngine(copy.deepcopy(model), tokenizer, gen_cfg, pack_weights=False)  # calibrates threads
    if args.same_threads_baseline and torch.get_num_threads() != default_threads:
        _, t2, s2, _ = one_at_a_time()
        print(f"(one at a time with tunelab's {torch.get_num_threads()} thread(s): {t2 / s2:.1f} tok/s)")
    threads = torch.get_num_threads()
    rows.append(("engine_fp32_one_prefill", f"GenerationEngine fp32, one padded prefill, unpacked ({threads} thr)",
                 *engine_run(unpacked, bucketed=False)))
    rows.append(("engine_fp32_unpacked", f"GenerationEngine fp32, prefill w/o padding, unpacked ({threads} thr)",
                 *engine_run(unpacked)))
    del unpacked
    # The fp32 engine is also the default one (re-timed in the rounds below) where bf16 is not fast.
    default_engine, default_row = GenerationEngine(copy.deepcopy(model), tokenizer, gen_cfg), "engine_fp32"
    rows.append((default_row, f"GenerationEngine fp32, w/o padding + packed weights ({threads} thr)",
                 *engine_run(default_engine)))
    # What `tunelab predict`/`chat` use for a generative run: model.predict_dtype auto (bf16 on a fast-bf16 CPU).
    auto_cfg = ModelConfig(name_or_path=args.model)
    auto_hw = detect_hardware(auto_cfg)
    dtype = predict_dtype(auto_cfg, auto_hw, generative=True)
    if dtype != torch.float32:
        del default_engine  # its fp32 weights and packs, before the bf16 model loads (peak RSS as before)
        fast = load_model(auto_cfg, "causal_lm", auto_hw, tokenizer=tokenizer, for_training=False, dtype=dtype).eval()
        name = str(dtype).removeprefix("torch.")
        rows.append((f"engine_{name}_unpacked", f"GenerationEngine {name}, unpacked ({threads} thr)",
                     *engine_run(GenerationEngine(fast, tokenizer, gen_cfg, pack_weights=False))))
        default_engine, default_row = GenerationEngine(fast, tokenizer, gen_cfg), f"engine_{name}"
        rows.append((default_row, f"GenerationEngine {name} (tunelab default) ({threads} thr)",
                     *engine_run(default_engine)))  # packs `fast` from here on
    # This VM's speed drifts by tens of percent over a minute; the baseline takes ~40 s, the engine ~4 s. So the pair
    # is timed again back to back, and the ratio is reported per round and as the median over all rounds.
    default_rows = [default_row]  # the default engine's rows: their speedups are the ratios per round
    baseline_of: dict[str, float] = {}  # rows timed in a round compare with that round's baseline
    for r in range(args.rounds):
        torch.set_num_threads(default_threads)
        base_texts, base_tokens, base_s, base_steal = one_at_a_time()
        torch.set_num_threads(threads)
        texts, tokens, seconds, steal = engine_run(default_engine)
        rows.append((f"round{r + 1}_one_at_a_time_fp32", f"  round {r + 1}: one at a time, fp32", base_texts,
                     base_tokens, base_s, base_steal))
        for setting in (f"round{r + 1}_one_at_a_time_fp32", f"round{r + 1}_{default_row}"):
            baseline_of[setting] = base_tokens / base_s
        rows.append((f"round{r + 1}_{default_row}", f"  round {r + 1}: GenerationEngine default", texts, tokens,
                     seconds, steal))
        default_rows.append(f"round{r + 1}_{default_row}")

    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    padded_one = max(lengths) * len(lengths)  # one batch when batch_size >= prompts
    padded_groups = sum(max(lengths[i] for i in g) * len(g) for g in _length_groups(lengths))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    base = single_tokens / single_s
    print(f"{hardware.describe()}; CPU flags: {' '.join(cpu_flags()) or 'none of avx2/avx512/bf16/amx'}; "
          f"{len(prompts)} prompts x <= {args.new_tokens} new tokens, greedy")
    route = "packed end to end" if _packs_prompts(model) else "by length groups"
    print(f"prefill positions: one padded batch {padded_one}, by length groups {padded_groups}, packed end to end "
          f"{sum(lengths) - len(lengths)} (+ each prompt's last token: real {sum(lengths)}); this model: {route}")
    results = []
    for setting, label, texts, tokens, seconds, steal in rows:
        same = sum(a == b for a, b in zip(singles, texts))
        speedup = tokens / seconds / baseline_of.get(setting, base)
        print(f"{label:58s} {tokens / seconds:8.1f} tok/s  {speedup:5.2f}x  "
              f"({tokens} tokens, {seconds:.1f}s; equal to fp32 one-at-a-time: {same}/{len(prompts)}; "
              f"{steal_text(steal)})")
        results.append({"setting": setting, "tokens_per_s": tokens / seconds, "speedup": speedup,
                        "new_tokens": tokens, "seconds": seconds, "equal_outputs": same, "prompts": len(prompts),
                        "peak_rss_gb": rss, "cpu_flags": cpu_flags(), "host_steal_pct": steal})
    import statistics

    ratios = [res["speedup"] for res in results if res["setting"] in default_rows]
    print(f"default engine / one at a time, per round: {' '.join(f'{x:.2f}x' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}x")
    print(f"peak RSS {rss:.2f} GB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
