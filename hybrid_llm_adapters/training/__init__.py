"""Reward-router pipeline (DESIGN.md method 1, arXiv 2409.13757): token labels by teacher forcing, features,
training, calibration.

- :mod:`.prompts`         prompt sources (GSM8K and SVAMP past their evaluation items, MMLU, chit-chat, own
                          code tasks; never HumanEval)
- :mod:`.labels`          SLM responses (greedy and sampled) scored by the cloud in one echo call each
- :mod:`.token_features`  what the decoder sees at each response token, from one teacher-forced SLM forward
- :mod:`.token_head`      the candidate head (token and pair terms, cross-validated by prompt)
- :mod:`.separate_model`  the paper's separate reward model on the same labels (0.5B, top layers tuned)
- :mod:`.calibrate`       threshold <-> activation ratio (and cost budget)

CLI: ``hybrid-llm label``, ``hybrid-llm train-reward``, ``hybrid-llm calibrate``; the whole run with its
results: ``benchmarks/reward_model.py`` (``make reward``).
"""
