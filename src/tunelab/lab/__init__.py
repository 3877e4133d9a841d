"""Inspection tools for understanding fine-tuning before trusting it (front ends: `tunelab lab ...`).

- lab.tokens:   special tokens, chat-template control tokens, a sample chat token by token, tokens per
                character by script; adding tokens with mean-initialised embedding rows (`lab tokens`).
- lab.template: training examples exactly as the Trainer receives them, with the loss mask (`lab template`).
- lab.compare:  the same prompts through several models, reference log-likelihoods (`lab compare`).
- lab.explain:  one real optimizer step of a run, narrated with its own numbers (`lab explain`).
- lab.lengths:  token-length analysis of a run's model inputs (`lab lengths`, `data lengths`).
"""
