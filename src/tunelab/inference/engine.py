"""Text generation: batched with a KV cache, and streamed for chat.

Prompts are sorted by length and generated in batches with left padding, so
each batch does little wasted work; outputs come back in the caller's order.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from tunelab.config.schema import GenerationConfig


@dataclass
class GenerationStats:
    prompts: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


class GenerationEngine:
    def __init__(self, model, tokenizer, config: GenerationConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        self.stats = GenerationStats()
        self.model.eval()
        self.cpu_threads: int | None = None
        if self.device.type == "cpu":
            # Batched decoding multiplies small matrices; on busy/SMT vCPUs 2 threads made them 20x slower.
            # Set process-wide on purpose: generation runs from several methods and a streaming worker thread.
            from tunelab.models.threads import choose_cpu_threads

            self.cpu_threads, _ = choose_cpu_threads()
            torch.set_num_threads(self.cpu_threads)

    def _generate_kwargs(self, **overrides) -> dict:
        c = self.config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        kwargs = dict(max_new_tokens=c.max_new_tokens, do_sample=c.do_sample,
                      repetition_penalty=c.repetition_penalty, pad_token_id=self.tokenizer.pad_token_id,
                      eos_token_id=self._stop_ids())
        if c.do_sample:
            kwargs.update(temperature=c.temperature, top_p=c.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        # Chat templates end turns with their own token (Gemma: <end_of_turn>); stop there too.
        for token in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a reply: EOS and the chat template's end-of-turn token."""
        return self._stop_ids()

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def generate(self, prompts: list[str], **overrides) -> list[str]:
        """Generate a completion for each prompt text (already templated); returns texts in input order."""
        if not prompts:
            return []
        tok = self.tokenizer
        kwargs = self._generate_kwargs(**overrides)
        batch_size = overrides.get("batch_size") or self.config.batch_size
        lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        outputs: list[str] = [""] * len(prompts)
        old_side = tok.padding_side
        tok.padding_side = "left"
        start = time.perf_counter()
        try:
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
                out = self.model.generate(**enc, **kwargs)
                new = out[:, enc["input_ids"].shape[1]:]
                for row, i in enumerate(idx):
                    ids = new[row]
                    self.stats.new_tokens += _count_until_stop(ids, kwargs["eos_token_id"] + [tok.pad_token_id])
                    outputs[i] = tok.decode(ids, skip_special_tokens=True).strip()
        finally:
            tok.padding_side = old_side
        self.stats.prompts += len(prompts)
        self.stats.seconds += time.perf_counter() - start
        return outputs

    @torch.inference_mode()
    def generate_batch_ids(self, prompt_ids: list[list[int]], max_new_tokens: int, logits_processor=None,
                           stopping_criteria=None) -> torch.Tensor:
        """One left-padded batch of tokenized prompts through `model.generate`, greedy unless `logits_processor`
        picks tokens itself: the hook of the server's request batching (tunelab.inference.batching), whose
        processor samples each row with its own settings and whose stopping criteria stream and stop each row.
        Returns the new token ids (rows padded after they stopped)."""
        kwargs = self._generate_kwargs(max_new_tokens=max_new_tokens, do_sample=False)
        pad = kwargs["pad_token_id"] if kwargs["pad_token_id"] is not None else kwargs["eos_token_id"][0]
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in prompt_ids], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids],
                                      device=self.device)
        start = time.perf_counter()
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=logits_processor,
                                  stopping_criteria=stopping_criteria, **kwargs)
        new = out[:, width:]
        self.stats.prompts += len(prompt_ids)
        self.stats.new_tokens += sum(_count_until_stop(row, kwargs["eos_token_id"] + [pad]) for row in new)
        self.stats.seconds += time.perf_counter() - start
        return new

    def stream(self, prompt: str, **overrides) -> Iterator[str]:
        """Yield text pieces as they are generated (for interactive chat)."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        kwargs = self._generate_kwargs(**overrides)
        errors: list[BaseException] = []

        def run():
            try:
                with torch.inference_mode():
                    self.model.generate(**enc, **kwargs, streamer=streamer)
            except BaseException as exc:  # surface errors from the worker thread
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]


def _count_until_stop(ids: torch.Tensor, stop_ids: list[int]) -> int:
    for n, token in enumerate(ids.tolist(), 1):
        if token in stop_ids:
            return n
    return len(ids)
