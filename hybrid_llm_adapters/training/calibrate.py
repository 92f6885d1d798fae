"""Threshold calibration: reward threshold <-> cloud activation ratio (and cost).

The router sends a token to the cloud when its reward is below the threshold, so on a dev set of router
scores (the SLM's candidates along held-out cloud outputs, see :mod:`.evaluate`) the activation at
threshold tau is the share of scores below tau, and the threshold for a target activation a is the
a-quantile of the scores.

A calibration table (activation -> threshold at 0, 0.05, ..., 1) can be stored in a reward scorer's manifest
(``calibration`` field); ``RouterConfig(kind="reward", target_activation=a)`` then resolves its threshold
from it (:func:`threshold_for_target`), so callers may give either a raw threshold or a target ratio.

Cost: every cloud call re-sends the prefix. With prices in USD per million tokens, one cloud token costs
``(prefix * ((1 - cached) * input + cached * cached_input) + output) / 1e6 + per_call``; the cost per 1000
generated tokens is ``1000 * activation * that``. A budget therefore caps the activation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError

TABLE_STEPS = tuple(round(i * 0.05, 2) for i in range(21))


def activation_at(scores: list[float], threshold: float) -> float:
    """Share of tokens whose score is below ``threshold`` (those go to the cloud)."""
    if not scores:
        raise ConfigError("no scores to calibrate on; collect router scores on a dev set first.")
    return sum(s < threshold for s in scores) / len(scores)


def threshold_for_activation(scores: list[float], target: float) -> float:
    """A threshold with activation as close to ``target`` as the scores allow (a midpoint between the
    k-th and (k+1)-th smallest scores, k = round(target * n))."""
    if not 0.0 <= target <= 1.0:
        raise ConfigError(f"target activation {target} must lie in [0, 1] (a share of tokens).")
    s = sorted(scores)
    if not s:
        raise ConfigError("no scores to calibrate on; collect router scores on a dev set first.")
    k = round(target * len(s))
    if k <= 0:
        return s[0] - 1e-6
    if k >= len(s):
        return s[-1] + 1e-6
    return (s[k - 1] + s[k]) / 2


def calibration_table(scores: list[float]) -> dict[str, list[float]]:
    return {"activation": list(TABLE_STEPS),
            "threshold": [threshold_for_activation(scores, a) for a in TABLE_STEPS],
            "dev_tokens": [float(len(scores))]}


def threshold_for_target(calibration: dict[str, Any] | None, target: float, where: str = "reward scorer") -> float:
    """Threshold for a target activation by linear interpolation in a stored calibration table."""
    if not calibration or "activation" not in calibration:
        raise ConfigError(
            f"{where} has no calibration table, so target_activation cannot be resolved; run "
            "`hybrid-llm calibrate --scores FILE --write-head HEAD`, or pass a raw threshold instead."
        )
    acts, ths = calibration["activation"], calibration["threshold"]
    if not 0.0 <= target <= 1.0:
        raise ConfigError(f"target_activation={target} must lie in [0, 1].")
    for i in range(1, len(acts)):
        if target <= acts[i]:
            a0, a1, t0, t1 = acts[i - 1], acts[i], ths[i - 1], ths[i]
            return t0 + (t1 - t0) * (target - a0) / (a1 - a0) if a1 > a0 else t1
    return ths[-1]


def cost_per_cloud_token(prefix_tokens: float, input_per_mtok: float, cached_input_per_mtok: float,
                         output_per_mtok: float, per_call: float = 0.0, cached_fraction: float = 0.0) -> float:
    prompt = prefix_tokens * ((1 - cached_fraction) * input_per_mtok + cached_fraction * cached_input_per_mtok)
    return (prompt + output_per_mtok) / 1e6 + per_call


def activation_for_budget(usd_per_1k_tokens: float, per_token_cost: float) -> float:
    if per_token_cost <= 0:
        return 1.0
    return max(0.0, min(1.0, usd_per_1k_tokens / (1000 * per_token_cost)))


def sweep(scores: list[float], labels: list[int] | None = None) -> list[dict[str, float]]:
    """Threshold -> activation (and the share of mismatch tokens caught, when labels are given)."""
    rows = []
    n_pos = sum(labels) if labels else 0
    for a in TABLE_STEPS:
        th = threshold_for_activation(scores, a)
        row = {"target": a, "threshold": th, "activation": activation_at(scores, th)}
        if labels and n_pos:
            row["mismatch_caught"] = sum(1 for s, y in zip(scores, labels) if y and s < th) / n_pos
        rows.append(row)
    return rows


def write_calibration(head_path: str | Path, calibration: dict[str, Any]) -> None:
    """Store ``calibration`` in a reward scorer's manifest (trunk .safetensors file or separate folder)."""
    from ..local.reward import RewardManifest, load_head

    path = Path(head_path)
    if path.is_dir():
        mf = path / "reward_manifest.json"
        manifest = RewardManifest.model_validate_json(mf.read_text())
        manifest.calibration = calibration
        mf.write_text(manifest.model_dump_json(indent=2))
        return
    head = load_head(path)
    head.manifest.calibration = calibration
    head.save(path)


def calibrate_cli(args: Any) -> dict[str, Any]:
    data = json.loads(Path(args.scores).read_text())
    tokens = data.get("token_scores", data)
    if args.field not in tokens:
        raise ConfigError(f"{args.scores} has no scores named {args.field!r}; it has {sorted(tokens)}.")
    scores = [float(s) for s in tokens[args.field]]
    scores = [s for s in scores if not math.isnan(s)]
    labels = [int(v) for v in tokens["label"]] if "label" in tokens and len(tokens["label"]) == len(scores) else None
    report: dict[str, Any] = {"field": args.field, "tokens": len(scores), "sweep": sweep(scores, labels)}
    target = args.target_activation
    if args.max_usd_per_1k_tokens is not None:
        from ..config import PriceTable

        prices = PriceTable()
        per_tok = cost_per_cloud_token(args.mean_prefix_tokens, prices.input_per_mtok,
                                       prices.cached_input_per_mtok, prices.output_per_mtok, prices.per_call,
                                       args.cached_fraction)
        budget_act = activation_for_budget(args.max_usd_per_1k_tokens, per_tok)
        report["budget"] = {"usd_per_cloud_token": per_tok, "max_activation": budget_act}
        target = budget_act if target is None else min(target, budget_act)
    if target is not None:
        th = threshold_for_activation(scores, target)
        report["chosen"] = {"target_activation": target, "threshold": th,
                            "activation": activation_at(scores, th)}
    if args.write_head is not None:
        write_calibration(args.write_head, calibration_table(scores))
        report["wrote_calibration_to"] = str(args.write_head)
    return report
