"""OpenAI-compatible cloud side: the client (client.py), its reply records (replies.py), the circuit breaker and
the verification rules. The local vLLM server manager is set-up tooling: ``devtools.vllm_server``."""
