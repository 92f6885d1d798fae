"""Reliability benchmark on the real stack: faults injected in front of the real vLLM server (the fault proxy of
tests/fault_proxy.py), both failure policies, the circuit breaker's recovery, bad inputs through both adapters,
16 + 16 concurrent requests against one by one, and a memory soak. Writes benchmarks/results/reliability.json
and the README's table; nothing in either is typed by hand.

    python benchmarks/reliability.py [--soak-requests 200] [--max-tokens 6]

Needs the default models (`hybrid-llm models install`) and the cloud server (`hybrid-llm cloud start`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fault_proxy import FAULT_MODES, FaultProxy
from readme_table import markdown_table, write_section

from hybrid_llm_adapters import (
    CloudConfig,
    CloudError,
    GenerationConfig,
    HybridEngine,
)
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.devtools.vllm_server import VLLMServerConfig, server_status
from hybrid_llm_adapters.errors import CloudUnavailableError
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.models import DEFAULT_SLM, resolve_model
from hybrid_llm_adapters.routing import AlwaysCloudRouter

OUT = ROOT / "benchmarks" / "results" / "reliability.json"
QUESTION = "Write a Python function that returns the square of x."
TIMEOUT_S = 30.0
HANG_TIMEOUT_S = 3.0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --------------------------------------------------------------------------------------------- faults


def run_fault(slm_dir: Path, proxy: FaultProxy, model: str, mode: str, policy: str, max_tokens: int) -> dict[str, Any]:
    """One request that meets ``mode`` after two cloud tokens (at once for refuse / hang)."""
    timeout = HANG_TIMEOUT_S if mode == "hang" else TIMEOUT_S
    config = CloudConfig(base_url=proxy.base_url, model=model, timeout=timeout, max_retries=1, on_failure=policy,
                         breaker_failures=0)
    engine = HybridEngine(load_local_model(slm_dir), AlwaysCloudRouter(), CloudClient(config))
    ids = engine.render([{"role": "user", "content": QUESTION}])
    after = 0 if mode in ("refuse", "hang") else 2
    proxy.injected.clear()
    proxy.set(mode, after=after)
    streamed: list[Any] = []
    row: dict[str, Any] = {"fault": mode, "policy": policy}
    t0 = time.monotonic()
    try:
        gen = engine.stream(ids, GenerationConfig(max_new_tokens=max_tokens))
        for event in gen:
            streamed.append(event)  # noqa: PERF402 - what streamed before a raise is the point
        result = gen.result
        assert result is not None
        before = engine.tokenizer.decode(result.token_ids[:after], skip_special_tokens=True)
        sources = [e.source for e in result.events if not e.final_flush]
        row.update(outcome="completed", tokens=len(result.token_ids), cloud_tokens=result.ledger.cloud_tokens,
                   fallback_tokens=result.ledger.fallback_tokens, failed_cloud_calls=result.ledger.failed_cloud_calls,
                   # None: the fault came before any text, so there was nothing to keep
                   text_kept=(result.text.startswith(before) and "".join(e.text for e in streamed) == result.text)
                   if before else None,
                   fallback_marked=all(s == "fallback" for s in sources[result.ledger.cloud_tokens:])
                   if result.ledger.failed_cloud_calls else None)
    except CloudError as e:
        text = "".join(ev.text for ev in streamed)
        ledger = e.ledger  # the request's own ledger up to the fault
        row.update(outcome=f"raised {type(e).__name__}", tokens=len(e.partial_token_ids),
                   cloud_tokens=ledger.cloud_tokens if ledger else None,
                   fallback_tokens=ledger.fallback_tokens if ledger else None,
                   failed_cloud_calls=ledger.failed_cloud_calls if ledger else None,
                   text_kept=(e.partial_text.startswith(text) and len(e.partial_token_ids) == len(streamed))
                   if streamed else None,
                   fallback_marked=None,  # the raise policy marks nothing: it raises
                   error=str(e).split(". ")[0][:160])
    row["seconds"] = round(time.monotonic() - t0, 2)
    row["attempts_faulted"] = sum(proxy.injected.values())
    # a reply without logprobs is used as text in replace mode (no retry); every other fault: 1 try + 1 retry
    row["retries_bounded"] = (row["failed_cloud_calls"] == 0 if mode == "no_logprobs"
                              else row["attempts_faulted"] <= 2)
    # survived: no text lost (where there was text), retries bounded, fallback tokens marked (where the local
    # policy fell back), and the policy honoured (local completes; raise raises or completes a no-fault run)
    row["survived"] = bool(row["text_kept"] is not False and row["retries_bounded"]
                           and row["fallback_marked"] is not False
                           and (policy == "raise" or row["outcome"] == "completed"))
    proxy.set("pass")
    return row


def run_breaker(slm_dir: Path, proxy: FaultProxy, model: str) -> dict[str, Any]:
    """Down -> the breaker opens -> requests skip the cloud at once -> the cloud is back -> one probe closes it."""
    config = CloudConfig(base_url=proxy.base_url, model=model, timeout=TIMEOUT_S, max_retries=1, on_failure="local",
                         breaker_failures=2, breaker_reset_s=15.0)
    engine = HybridEngine(load_local_model(slm_dir), AlwaysCloudRouter(), CloudClient(config))
    ids = engine.render([{"role": "user", "content": QUESTION}])
    gen = GenerationConfig(max_new_tokens=1)  # one token: the breaker's state is checked before reset_s ends
    proxy.set("503")
    t0 = time.monotonic()
    for _ in range(2):
        engine.generate(ids, gen)
    failing_s = time.monotonic() - t0
    seen = proxy.completions
    raising = CloudClient(config.model_copy(update={"on_failure": "raise"}))  # shares the endpoint's breaker
    try:
        HybridEngine(engine.local, AlwaysCloudRouter(), raising).generate(ids, gen)
        message = ""
    except CloudUnavailableError as e:
        message = str(e).split(". Fix")[0]
    t0 = time.monotonic()
    skipped = engine.generate(ids, gen)
    skipped_s = time.monotonic() - t0
    asked_while_open = proxy.completions - seen
    proxy.set("pass")
    time.sleep(max(0.0, engine.cloud.breaker.retry_in()) + 0.1)  # type: ignore[union-attr]
    back = engine.generate(ids, GenerationConfig(max_new_tokens=3))
    assert engine.cloud is not None
    return {"breaker_failures": 2, "breaker_reset_s": config.breaker_reset_s, "two_failing_requests_s": round(failing_s, 2),
            "request_while_open_s": round(skipped_s, 3), "cloud_requests_while_open": asked_while_open,
            "fallback_tokens_while_open": skipped.ledger.fallback_tokens, "raise_policy_error": message,
            "cloud_tokens_after_recovery": back.ledger.cloud_tokens, "state_after": engine.cloud.breaker.state}


# ------------------------------------------------------------------------------------------ bad input


def bad_inputs(slm_dir: Path, base_url: str, model: str) -> list[dict[str, Any]]:
    from langchain_core.messages import ChatMessage as LCChat
    from langchain_core.messages import HumanMessage
    from langchain_hybrid_llm import HybridChatModel as LC
    from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
    from llama_index.llms.hybrid import HybridChatModel as LI

    def lc(**kw: Any) -> Any:
        return LC(**{"model": str(slm_dir), "base_url": base_url, "cloud_model": model, "max_tokens": 4, **kw})

    def li(**kw: Any) -> Any:
        return LI(**{"model": str(slm_dir), "base_url": base_url, "cloud_model": model, "max_tokens": 4, **kw})

    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]
    keyed = FaultProxy(base_url, api_key="the-right-key")
    # each case with the documented error (README's bad-input table): its type and a phrase of its message;
    # a bad input counts as refused only when it raised exactly that
    cases: list[tuple[str, Callable[[], Any], tuple[str, ...], str]] = [
        ("empty message list", lambda: lc().invoke([]), ("ConfigError",), "messages is empty"),
        ("unknown role", lambda: lc().invoke([LCChat(role="wizard", content="hi")]), ("ValueError", "ConfigError"),
         "no counterpart in the chat template"),
        ("non-text content (LangChain)", lambda: lc().invoke([HumanMessage(content=image)]),
         ("ValueError", "ConfigError"), "text content only"),
        ("non-text content (LlamaIndex)", lambda: li().chat([ChatMessage(
            role="user", blocks=[TextBlock(text="what is this?"), ImageBlock(url="http://x/a.png")])]),
         ("ValueError", "ConfigError"), "text only"),
        ("prompt longer than the SLM's context", lambda: lc().invoke("word " * 33000), ("ConfigError",),
         "shorten the prompt"),
        ("max_tokens <= 0", lambda: li().complete("hi", max_tokens=0), ("ValidationError",), "must be >= 1"),
        ("NaN threshold", lambda: lc(threshold=float("nan")), ("ValidationError",), "is not a finite number"),
        ("infinite threshold", lambda: li(router="max_prob", threshold=float("inf")), ("ValidationError",),
         "is not a finite number"),
        ("reward model trained for another pair", lambda: _foreign_head_request(lc), ("ModelMismatchError",),
         "was trained for SLM"),
        ("unreachable base_url", lambda: li(base_url="http://127.0.0.1:9/v1", router="cloud", timeout=3,
                                            max_retries=1).complete("hi"), ("CloudError",),
         "Check that the server is up"),
        ("wrong API key (401)", lambda: lc(base_url=keyed.base_url, router="cloud", api_key="wrong").invoke("hi"),
         ("CloudError",), "refused the API key"),
        ("model name the server does not serve", lambda: lc(cloud_model="gpt-99", router="cloud").invoke("hi"),
         ("CloudError",), "does not serve model 'gpt-99'"),
    ]
    rows = []
    try:
        for name, call, documented, phrase in cases:
            t0 = time.monotonic()
            try:
                call()
                rows.append({"input": name, "refused": False, "error": "", "message": ""})
            except Exception as e:  # noqa: BLE001 - recording what each bad input raises is the point
                lines = [ln.strip() for ln in str(e).strip().splitlines()]
                text = next((ln for ln in lines if ln.startswith("Value error, ")), lines[0])
                text = text.removeprefix("Value error, ").split(" [type=")[0]
                fix = any(w in text for w in ("Fix", "fix", "pass ", "use ", "Use ", "set ", "remove", "Remove",
                                              "shorten", "Check"))
                as_documented = type(e).__name__ in documented and phrase in str(e)
                rows.append({"input": name, "refused": as_documented, "error": type(e).__name__,
                             "documented_error": "/".join(documented), "message": text[:320],
                             "names_fix": fix, "seconds": round(time.monotonic() - t0, 2)})
    finally:
        keyed.close()
    return rows


def _foreign_head_request(lc: Callable[..., Any]) -> Any:
    import tempfile

    import torch

    from hybrid_llm_adapters.local.reward import LinearRewardHead, RewardManifest

    manifest = RewardManifest(kind="linear", slm="other-slm", cloud="other-cloud", tokenizer_sha256="0" * 64)
    path = Path(tempfile.mkdtemp()) / "head.safetensors"
    LinearRewardHead(torch.ones(896), torch.tensor(0.0), manifest).save(path)
    return lc(router="reward", reward_head=str(path)).invoke("hi")


# ---------------------------------------------------------------------------------- concurrency, soak


PROMPTS = [f"In one short sentence: what does the Python built-in `{name}` do?" for name in
           ("len", "zip", "map", "sorted", "sum", "range", "enumerate", "any", "all", "min", "max", "abs",
            "round", "repr", "iter", "next")]


def concurrency(slm_dir: Path, base_url: str, model: str, max_tokens: int) -> dict[str, Any]:
    from langchain_hybrid_llm import HybridChatModel as LC
    from llama_index.llms.hybrid import HybridChatModel as LI

    common = {"model": str(slm_dir), "base_url": base_url, "cloud_model": model, "router": "entropy",
              "threshold": 1.0, "max_tokens": max_tokens, "timeout": 120}
    lc_llm, li_llm = LC(**common), LI(**common)
    t0 = time.monotonic()
    one_by_one = [lc_llm.invoke(p) for p in PROMPTS]
    sequential_s = time.monotonic() - t0

    async def together() -> tuple[list[Any], list[Any]]:
        return await asyncio.gather(lc_llm.abatch(PROMPTS, config={"max_concurrency": len(PROMPTS)}),
                                    asyncio.gather(*[li_llm.acomplete(p) for p in PROMPTS]))

    t0 = time.monotonic()
    lc_out, li_out = asyncio.run(together())
    concurrent_s = time.monotonic() - t0
    expected = [m.content for m in one_by_one]
    return {
        "requests_in_flight": 2 * len(PROMPTS), "max_tokens": max_tokens,
        "langchain_abatch_equal": [m.content for m in lc_out] == expected,
        "llama_index_async_equal": [r.text for r in li_out] == expected,
        "cloud_tokens_one_by_one": sum(m.response_metadata["hybrid_ledger"]["cloud_tokens"] for m in one_by_one),
        "one_by_one_s": round(sequential_s, 1), "concurrent_32_s": round(concurrent_s, 1),
    }


def soak(slm_dir: Path, base_url: str, model: str, n: int, bound_mb: float) -> dict[str, Any]:
    from hybrid_llm_adapters import EngineConfig, RouterConfig, get_engine

    engine = get_engine(EngineConfig(slm=str(slm_dir), router=RouterConfig(kind="entropy", threshold=1.0),
                                     cloud=CloudConfig(base_url=base_url, model=model, timeout=120)))
    gen = GenerationConfig(max_new_tokens=2)

    def one(i: int) -> int:
        ids = engine.render([{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + " " * (i % 5)}])
        return len(engine.generate(ids, gen).token_ids)

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(24)))
        gc.collect()
        before = rss_mb()
        produced = list(pool.map(one, range(n)))
    gc.collect()
    grown = rss_mb() - before
    return {"requests": n, "concurrency": 8, "max_tokens": 2, "seconds": round(time.monotonic() - t0, 1),
            "all_answered": all(p > 0 for p in produced), "rss_before_mb": round(before, 1),
            "rss_growth_mb": round(grown, 1), "bound_mb": bound_mb, "within_bound": grown < bound_mb}


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=6)
    parser.add_argument("--soak-requests", type=int, default=200)
    parser.add_argument("--soak-bound-mb", type=float, default=64.0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()

    server = VLLMServerConfig()
    status = server_status(server.port)
    if not status.running:
        sys.exit("The cloud server is not running; start it with `hybrid-llm cloud start`.")
    base_url, model = status.base_url, server.name
    slm_dir = resolve_model(DEFAULT_SLM, progress=False)
    t_start = time.monotonic()
    faults = []
    with FaultProxy(base_url, hang_s=20.0, retry_after=0.5) as proxy:
        for mode in FAULT_MODES:
            for policy in ("local", "raise"):
                row = run_fault(slm_dir, proxy, model, mode, policy, args.max_tokens)
                print(json.dumps(row), file=sys.stderr)
                faults.append(row)
        breaker = run_breaker(slm_dir, proxy, model)
        print(json.dumps(breaker), file=sys.stderr)
    bad = bad_inputs(slm_dir, base_url, model)
    conc = concurrency(slm_dir, base_url, model, args.max_tokens)
    print(json.dumps(conc), file=sys.stderr)
    soaked = soak(slm_dir, base_url, model, args.soak_requests, args.soak_bound_mb)
    print(json.dumps(soaked), file=sys.stderr)
    summary = {
        "faults_injected": sum(r["attempts_faulted"] for r in faults),
        "fault_runs": len(faults), "fault_runs_survived": sum(r["survived"] for r in faults),
        "text_lost_runs": sum(r["text_kept"] is False for r in faults),
        "runs_without_text_to_keep": sum(r["text_kept"] is None for r in faults),
        "bad_inputs_tried": len(bad), "bad_inputs_refused": sum(r["refused"] for r in bad),
        "bad_input_errors_naming_a_fix": sum(r.get("names_fix", False) for r in bad),
        "concurrent_requests": conc["requests_in_flight"],
        "concurrent_equal_to_sequential": conc["langchain_abatch_equal"] and conc["llama_index_async_equal"],
        "breaker_recovered": breaker["state_after"] == "closed" and breaker["cloud_tokens_after_recovery"] > 0,
        "soak_requests": soaked["requests"], "soak_rss_growth_mb": soaked["rss_growth_mb"],
        "soak_within_bound": soaked["within_bound"],
    }
    report = {
        "what": "faults injected by tests/fault_proxy.py in front of the real vLLM server; real SLM "
                "(Qwen2.5-Coder-0.5B) and cloud (Qwen2.5-Coder-1.5B); greedy decoding",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"timeout_s": TIMEOUT_S, "hang_timeout_s": HANG_TIMEOUT_S, "max_retries": 1,
                     "retry_after_s": 0.5, "max_tokens": args.max_tokens,
                     "fault_after_cloud_tokens": "2 (refuse, hang: at once)"},
        "summary": summary, "faults": faults, "breaker": breaker, "bad_inputs": bad, "concurrency": conc,
        "soak": soaked, "seconds": round(time.monotonic() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if not args.no_readme:
        write_section("reliability", readme_tables(report), Path(__file__).resolve().parents[1] / "docs" / "reliability.md")


def readme_tables(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        (f"{report['date']}, {report['machine']}. {s['fault_runs_survived']}/{s['fault_runs']} fault runs survived "
        f"({s['faults_injected']} faults injected, {s['text_lost_runs']} runs lost text); "
        f"{s['bad_inputs_refused']}/{s['bad_inputs_tried']} bad inputs refused; {s['concurrent_requests']} requests "
        f"in flight gave the one-by-one answers: {s['concurrent_equal_to_sequential']}; breaker recovered: "
        f"{s['breaker_recovered']}; soak of {s['soak_requests']} requests grew RSS by {s['soak_rss_growth_mb']} MB "
        f"(bound {report['soak']['bound_mb']:g} MB)."),
        "",
        markdown_table(
            ["fault", "policy", "outcome", "faulted attempts", "cloud tokens kept", "fallback tokens", "seconds",
             "text kept"],
            [[r["fault"], r["policy"], r["outcome"], r["attempts_faulted"], r["cloud_tokens"], r["fallback_tokens"],
              r["seconds"], r["text_kept"]] for r in report["faults"]],
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
