"""Development and set-up tooling, kept off the runtime import path: the offline model installer and the
local vLLM cloud server manager (``make demo``, ``make test`` and the benchmarks use them; a user's chain
pointing at any OpenAI-compatible endpoint never imports them)."""
