"""Reward-model pipeline (DESIGN.md method 1, arXiv 2409.13757): data synthesis, chunking, training, calibration.

- :mod:`.prompts`   prompt sources (GSM8K, SVAMP, MMLU, chit-chat, own code tasks; never HumanEval)
- :mod:`.synth`     paired SLM / cloud responses via OpenAI-compatible endpoints (resumable JSONL)
- :mod:`.chunks`    equal-length chunk pairs, lengths 1..min(len)
- :mod:`.features`  SLM hidden states computed once, cached in safetensors
- :mod:`.train`     trunk head (linear on the SLM's hidden state) and separate RM (0.5B, top layers tuned)
- :mod:`.evaluate`  per-token ROC AUC vs SLM entropy / max-probability on held-out prompts
- :mod:`.calibrate` threshold <-> activation ratio (and cost budget)

CLI: ``hybrid-llm synth``, ``hybrid-llm train-reward``, ``hybrid-llm calibrate``; the whole run with its
results: ``benchmarks/reward_model.py``.
"""
