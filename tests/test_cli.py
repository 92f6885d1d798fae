"""The ``hybrid-llm`` command: flags map onto the one config model, bad values get a clear error, and a real
chat on the default pair prints each token's source and the ledger."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybrid_llm_adapters.cli import _engine_config, _generation_config, build_parser, main


def test_chat_flags_map_onto_the_config_models() -> None:
    args = build_parser().parse_args([
        "chat", "hi", "--router", "perturbation", "--rejection-risk", "0.1", "--cloud-mode", "block_verify",
        "--target-activation", "0.3", "--cloud-url", "http://x/v1", "--cloud-model", "m", "--max-tokens", "7",
        "--stop", "END", "--on-failure", "raise",
    ])
    config = _engine_config(args)
    assert (config.router.kind, config.router.rejection_risk, config.router.target_activation) == (
        "perturbation", 0.1, 0.3)
    assert (config.cloud.base_url, config.cloud.model, config.cloud.on_failure) == ("http://x/v1", "m", "raise")
    gen = _generation_config(args)
    assert (gen.cloud_mode, gen.max_new_tokens, gen.stop) == ("block_verify", 7, ["END"])


def test_out_of_range_flag_is_a_clear_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "hi", "--router", "entropy", "--target-activation", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "target_activation" in err and "less than 1" in err


def test_unknown_choice_is_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "hi", "--cloud-mode", "turbo"])
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


@pytest.mark.real
@pytest.mark.cloud
def test_real_chat_prints_sources_and_ledger(real_slm_dir: Path, cloud_base_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["chat", "What is 12 + 30? Answer with the number only.", "--slm", str(real_slm_dir),
               "--cloud-url", cloud_base_url, "--router", "entropy", "--threshold", "0.3",
               "--cloud-mode", "block_verify", "--max-tokens", "16", "--timeout", "120"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "token source:" in out
    answer = out.split("token source:")[0]  # the streamed answer comes first, then the legend and the ledger
    assert re.findall(r"\d+", answer) == ["42"], answer and "block_verify" in out  # the mode the ledger records
    assert "usage ledger" in out and "cloud_calls" in out


@pytest.mark.real
@pytest.mark.cloud
def test_models_list_and_cloud_status(real_slm_dir: Path, cloud_base_url: str, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from hybrid_llm_adapters import cli

    monkeypatch.setattr(cli.console, "width", 240)  # a wide terminal: table cells unwrapped
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b-instruct" in out and "yes" in out
    assert main(["cloud", "status"]) == 0
    assert '"running": true' in capsys.readouterr().out
