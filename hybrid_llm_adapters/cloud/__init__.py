"""OpenAI-compatible cloud side: the client (client.py) and the local vLLM server (server.py)."""
