"""`hybrid-llm eval` and `hybrid-llm sweep` on the real pair and the real vLLM cloud (short answers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_llm_adapters.cli import main

pytestmark = [pytest.mark.real, pytest.mark.cloud]


def test_eval_cloud_only_then_resume(real_slm_dir: Path, cloud_base_url: str, gsm8k_path: Path,
                                     tmp_path: Path) -> None:
    out = tmp_path / "cloud.jsonl"
    args = ["eval", "--task", "gsm8k", "--data", str(gsm8k_path), "--system", "cloud", "--max-tokens", "24",
            "--cloud-url", cloud_base_url, "--out", str(out)]
    assert main([*args, "--limit", "1"]) == 0
    assert main([*args, "--limit", "2"]) == 0  # resumes: answers only the second problem
    records = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert [r["id"] for r in records] == ["gsm8k-0", "gsm8k-1"]
    for r in records:
        led = r["ledger"]
        assert led["cloud_calls"] == 1 and led["cloud_tokens"] == r["tokens"] > 0 and r["completion"]
        assert led["billed_prompt_tokens"] == led["prompt_tokens"] > 20
        assert r["finish_reason"] in ("stop", "length")
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["problems"] == 2 and summary["activation_ratio"] == 1.0
    # the API bill (cached input at its price when the server reports a prefix-cache hit) is the run's cost
    # (a prefix-cache hit left by an earlier run of the same problem on this server bills cached input)
    if all(r["ledger"]["cached_prompt_tokens"] == 0 for r in records):
        assert summary["api_cost_usd"] == pytest.approx(summary["api_cost_if_cloud_only_usd"])
    else:
        assert summary["api_cost_usd"] < summary["api_cost_if_cloud_only_usd"]
    assert summary["api_cost_usd"] == pytest.approx(sum(r["ledger"]["cost_usd"] for r in records))


def test_sweep_on_humaneval_writes_table_json_and_plots(real_slm_dir: Path, cloud_base_url: str,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sweep", "--task", "humaneval", "--limit", "1", "--max-tokens", "12", "--router", "entropy",
               "--thresholds", "0.3,3", "--cloud-url", cloud_base_url, "--out-dir", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "sweep.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"slm-only", "cloud-only", "entropy-t0.3-replace", "entropy-t3.0-replace"}
    assert rows["slm-only"]["activation_ratio"] == 0.0 and rows["cloud-only"]["activation_ratio"] == 1.0
    # a lower entropy threshold sends at least as many tokens to the cloud
    assert rows["entropy-t0.3-replace"]["activation_ratio"] >= rows["entropy-t3.0-replace"]["activation_ratio"]
    assert rows["entropy-t0.3-replace"]["cloud_calls"] > 0
    assert all(r["cutoff_rate"] == 1.0 for r in rows.values())  # 12 tokens cannot finish a function
    for png in ("threshold_vs_accuracy", "threshold_vs_activation", "threshold_vs_throughput", "accuracy_vs_cost"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000
    assert "humaneval, 1 problems" in capsys.readouterr().out
