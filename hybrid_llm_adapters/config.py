"""One typed configuration for every path (engine, CLI, LangChain, LlamaIndex).

Validation raises on contradictions and names the value and the fix, in the spirit of
transformers' ``GenerationConfig.validate``.
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .errors import ConfigError

RouterKind = Literal["reward", "entropy", "max_prob", "perturbation", "local", "cloud", "cloud_per_token"]


# the turn's opening the cloud writes when tools are offered: a call's name, or an answer's first words. Chosen
# from the agent benchmark at a 256-token cap (docs/agents.md): 8 succeeded as often as 16 (0.71 in both
# frameworks, 0.97x cloud-only) at 0.30-0.35x its self-hosted cost against 0.38-0.59x
TOOL_TURN_DECISION_TOKENS = 8


class RouterSpec(NamedTuple):
    """What a router kind scores, in which units, and its default threshold (None: it does not score)."""

    units: str
    default_threshold: float | None


# The default entropy threshold, chosen on the quality frontier (docs/evaluation.md): the threshold that sent
# 30 % of held-out SLM text to the cloud (0.271 nats) matched cloud-only on all 164 HumanEval problems at 9.5 %
# cloud tokens and was the most accurate entropy point on GSM8K (92 % of cloud-only at 25 %), routing alone; the
# 10 % point (1.04, beside the first default, 1.0) kept 85 % and 62 %. What the cost policies do to it on a
# pay-per-token sheet is in the README ("Why these defaults").
DEFAULT_ENTROPY_THRESHOLD = 0.27
# the first default: benchmarks whose records were taken at it keep it, so those records stay comparable
FIRST_ENTROPY_THRESHOLD = 1.0

ROUTERS: dict[str, RouterSpec] = {  # the one registry of router kinds
    "reward": RouterSpec("reward score; keep the SLM token when >= threshold", 0.0),
    "entropy": RouterSpec("nats of the SLM's entropy; cloud when > threshold", DEFAULT_ENTROPY_THRESHOLD),
    "max_prob": RouterSpec("the SLM's top probability; cloud when < threshold", 0.5),
    "perturbation": RouterSpec("U-HLM disagreement rate in [0, 1]; cloud when > threshold", 0.2),
    "local": RouterSpec("always the SLM", None),
    "cloud": RouterSpec("always the cloud, one streamed request", None),
    "cloud_per_token": RouterSpec("always the cloud, one call per token (measurement)", None),
}
CloudMode = Literal["replace", "verify", "block_verify", "lookahead", "auto"]
FallbackPolicy = Literal["raise", "local"]

DEFAULT_CLOUD_BASE_URL = "http://127.0.0.1:8765/v1"
DEFAULT_SLM = "qwen2.5-coder-0.5b-instruct"  # the one default pair, named once (models.py installs it)
DEFAULT_CLOUD_MODEL = "qwen2.5-coder-1.5b-instruct"


def refuse_unknown_settings(given: Any, model: type[BaseModel]) -> None:
    """Refuse keyword arguments that are not settings of ``model`` (a misspelt name would otherwise be ignored
    silently), naming the closest valid setting."""
    if not isinstance(given, dict):
        return
    valid = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    unknown = sorted(k for k in given if isinstance(k, str) and k not in valid)
    if not unknown:
        return
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
        named.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    raise ConfigError(f"{model.__name__} has no setting {', '.join(named)}. Fix: use one of its settings "
                      f"(listed in {model.__name__}.model_fields), spelt as documented.")


def positive_tokens(value: int | None) -> int | None:
    """A token budget (max_new_tokens, the adapters' max_tokens) must allow at least one token."""
    if value is not None and value < 1:
        raise ConfigError(f"max_tokens={value} must be >= 1 (it bounds the answer's new tokens); pass a positive "
                          "budget, e.g. max_tokens=256.")
    return value


PRICE_PRESETS_FILE = "price_presets.json"


class PriceTable(BaseModel):
    """What the cloud bills, in USD per million tokens (and per call), with the provider's prompt-cache rules.

    ``kind="api"`` is a pay-per-token price sheet: every cloud call re-sends the prefix, so the engine's cost
    guard and hand-off are on by default. ``kind="self_hosted"`` is one's own server, where a re-sent prefix hits
    the prefix cache: they are off by default. The defaults are illustrative, not a real tariff; the shipped
    presets (:meth:`preset`) are examples too: check them against your provider's current sheet.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["api", "self_hosted"] = "api"
    input_per_mtok: float = Field(0.15, ge=0)
    cached_input_per_mtok: float = Field(0.075, ge=0, description="input tokens the provider serves from its "
                                         "prompt cache")
    output_per_mtok: float = Field(0.60, ge=0)
    per_call: float = Field(0.0, ge=0)
    min_cached_prefix: int = Field(0, ge=0, description="prompts shorter than this are never cached (e.g. 1,024)")
    cache_granularity: int = Field(1, ge=1, description="a cached prefix counts in whole steps of this many "
                                   "tokens (e.g. 128)")
    cached_from: Literal["server", "rules"] = Field(
        "server", description="server: bill the cached tokens the server reports; rules: bill what these rules "
        "say the provider would cache (the prefix this request already sent), e.g. to price a priced API's bill "
        "from runs on a self-hosted server")

    @property
    def bills_tokens(self) -> bool:
        return self.kind == "api" and (self.input_per_mtok > 0 or self.output_per_mtok > 0 or self.per_call > 0)

    def cached_by_rules(self, prompt_tokens: int, shared_prefix: int) -> int:
        """Tokens of a ``prompt_tokens`` prompt the provider would serve from cache when its first
        ``shared_prefix`` tokens were sent before (within this request)."""
        if prompt_tokens < self.min_cached_prefix or shared_prefix < self.min_cached_prefix:
            return 0
        return min(shared_prefix, prompt_tokens) // self.cache_granularity * self.cache_granularity

    @classmethod
    def presets(cls) -> dict[str, PriceTable]:
        """The example price sheets shipped with the package (data, not code: ``price_presets.json``)."""
        import json
        from importlib.resources import files

        data = json.loads(files("hybrid_llm_adapters.assets").joinpath(PRICE_PRESETS_FILE).read_text())
        return {name: cls(**{k: v for k, v in entry.items() if k != "note"})
                for name, entry in data["presets"].items()}

    @classmethod
    def preset(cls, name: str) -> PriceTable:
        """One shipped example sheet by name (an example: check it against your provider's current prices)."""
        found = cls.presets()
        if name not in found:
            raise ConfigError(f"no price preset {name!r}; the shipped examples are {sorted(found)}. Or pass your "
                              "own PriceTable(input_per_mtok=..., cached_input_per_mtok=..., output_per_mtok=...).")
        return found[name]


class GenerationConfig(BaseModel):
    """Decoding settings for one request."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, description="new tokens at most (>= 1; the adapters' max_tokens)")
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    cloud_mode: CloudMode = Field(
        "auto",
        description="auto (default): block_verify where the endpoint echoes prompt logprobs in our token space, "
        "replace elsewhere (docs/cost.md: on 50 + 50 problems it matched replace's accuracy at lower cost); "
        "replace: the cloud supplies the token (reward paper); verify: the cloud accepts or corrects the SLM's "
        "draft; block_verify: k drafts checked in one echo call; lookahead: one call returns several cloud tokens",
    )
    draft_tokens: int = Field(4, ge=1, le=64, description="block_verify: first block size (then adaptive)")
    max_draft_tokens: int = Field(16, ge=1, le=64)
    max_lookahead: int = Field(8, ge=1, le=64, description="lookahead: most cloud tokens per call")
    max_cost_ratio: float | Literal["auto"] | None = Field(
        "auto", description="cost guard: a cloud call that would take the request above this multiple of its "
        "cloud-only cost is not made; the cloud finishes the answer instead (hand-off) when that stays within "
        "the ratio, else the SLM does. auto: 1.0 when the prices are a pay-per-token API, off when self-hosted; "
        "None: off")
    handoff: Literal["auto", "on", "off"] = Field(
        "auto", description="when the router flags densely (handoff_flags of the last handoff_window steps) the "
        "cloud finishes the answer in one streamed call; auto: on for a pay-per-token API, off when self-hosted")
    decision_tokens: int | None = Field(
        None, ge=0, description="the answer's first N tokens are written by the cloud in one call, whatever the "
        "router's score (a decision point: with tools offered the turn's opening says call or answer); None: "
        f"{TOOL_TURN_DECISION_TOKENS} when the chat offers tools and leaves the choice open, else 0")
    decision_markers: list[str] = Field(
        default_factory=list, description="structural points in text protocols: after any of these strings, the "
        "rest of the line (at most decision_window tokens) is the cloud's, whatever the router says; e.g. "
        "['Action:', 'Action Input:'] for ReAct agents")
    decision_window: int = Field(32, ge=1, description="most tokens one decision marker sends to the cloud")
    tool_names: list[str] = Field(
        default_factory=list, description="bound tool names: where the answer opens a tool call's name, the SLM "
        "picks one of them (a constrained choice on its own state) instead of writing it freely")
    handoff_flags: int = Field(4, ge=1, description="flags that trigger a hand-off (see handoff_window)")
    handoff_window: int = Field(8, ge=1, description="steps looked back for handoff_flags")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @model_validator(mode="after")
    def _warn_ignored(self) -> GenerationConfig:
        if self.greedy and self.top_p != 1.0:
            warnings.warn(
                f"top_p={self.top_p} is ignored with temperature=0 (greedy); set temperature>0 to sample.",
                stacklevel=2,
            )
        return self

    @model_validator(mode="after")
    def _draft_bounds(self) -> GenerationConfig:
        if self.draft_tokens > self.max_draft_tokens:
            raise ConfigError(
                f"draft_tokens={self.draft_tokens} exceeds max_draft_tokens={self.max_draft_tokens}; "
                "raise max_draft_tokens or lower draft_tokens."
            )
        return self

    @model_validator(mode="after")
    def _handoff_window(self) -> GenerationConfig:
        if self.handoff_flags > self.handoff_window:
            raise ConfigError(f"handoff_flags={self.handoff_flags} exceeds handoff_window={self.handoff_window}; "
                              "a hand-off needs that many flags within the window: lower handoff_flags.")
        if isinstance(self.max_cost_ratio, float | int) and self.max_cost_ratio <= 0:
            raise ConfigError(f"max_cost_ratio={self.max_cost_ratio} must be > 0 (1.0: never above cloud-only); "
                              "pass None to turn the cost guard off.")
        return self

    def cost_ratio(self, prices: PriceTable) -> float | None:
        """The guard's ratio for these prices (None: off)."""
        if self.max_cost_ratio == "auto":
            return 1.0 if prices.bills_tokens else None
        return self.max_cost_ratio

    def handoff_on(self, prices: PriceTable) -> bool:
        return self.handoff == "on" or (self.handoff == "auto" and prices.bills_tokens)

    @field_validator("max_new_tokens")
    @classmethod
    def _positive_tokens(cls, v: int) -> int:
        return positive_tokens(v)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: object) -> object:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ConfigError("stop contains an empty string, which would stop at once; remove it.")
        return v


class CloudConfig(BaseModel):
    """Where the cloud LLM lives and how to talk to it.

    ``api_key`` precedence: the explicit value, then ``HYBRID_LLM_API_KEY``, then ``OPENAI_API_KEY``,
    then the placeholder ``"EMPTY"`` (what a local vLLM server accepts).
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(default_factory=lambda: os.environ.get("HYBRID_LLM_CLOUD_URL", DEFAULT_CLOUD_BASE_URL))
    model: str = Field(default_factory=lambda: os.environ.get("HYBRID_LLM_CLOUD_MODEL", DEFAULT_CLOUD_MODEL))
    api_key: SecretStr = Field(
        default_factory=lambda: SecretStr(
            os.environ.get("HYBRID_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        ),
        repr=False,
    )
    timeout: float = Field(120.0, gt=0, description="seconds per HTTP request (a CPU-served cloud under load can take a minute to start a stream)")
    max_retries: int = Field(2, ge=0, description="retries of transient errors (connection, timeout, 429, 5xx)")
    max_retry_s: float = Field(60.0, gt=0, description="bound on one call's total time across its retries "
                               "(the attempts, their timeouts and the waits between them)")
    retry_after_max_s: float = Field(10.0, ge=0, description="longest 429 Retry-After wait honoured; a longer "
                                     "one is cut to this")
    breaker_failures: int = Field(3, ge=0, description="consecutive failed calls (after their retries) that open "
                                  "the endpoint's circuit breaker; 0 = no breaker")
    breaker_reset_s: float = Field(30.0, gt=0, description="seconds the breaker stays open before one probe call")
    on_failure: FallbackPolicy = Field(
        "raise", description="after retries: 'raise' a CloudError (with the partial text) or continue 'local'"
    )
    send_token_ids: bool | None = Field(
        None, description="send prompts as token ids; None = when SLM and cloud share a tokenizer"
    )
    logprobs: int = Field(5, ge=0, le=20)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ConfigError(f"cloud base_url={v!r} is not an http(s) URL; use e.g. 'http://127.0.0.1:8765/v1'.")
        return v.rstrip("/")


def finite_threshold(value: float | None) -> float | None:
    """A router threshold must be a real number: NaN compares false with every score (the router would never
    or always call the cloud, silently) and an infinity pins it to one side."""
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"router threshold={value} is not a finite number; pass a real value (e.g. entropy "
                          "1.0, max_prob 0.5), or None for the router's default.")
    return value


class RouterConfig(BaseModel):
    """Which router decides local vs cloud, and its threshold.

    reward: keep the SLM token when its reward score >= threshold.
    entropy: send to cloud when the SLM's entropy (nats) > threshold.
    max_prob: send to cloud when the SLM's top probability < threshold.
    local: always the SLM. cloud: the cloud answers in one streamed request (cloud-only through the engine);
    cloud_per_token: the cloud supplies every token in its own call (for measuring the per-token path).
    """

    model_config = ConfigDict(extra="forbid")

    kind: RouterKind = "entropy"
    threshold: float | None = None
    target_activation: float | None = Field(
        None, gt=0, lt=1, description="hold this cloud-token fraction per request with a dynamic threshold"
    )
    max_cost_usd: float | None = Field(None, gt=0, description="per-request cloud budget (dynamic threshold)")
    rejection_risk: float | None = Field(
        None, gt=0, lt=1, description="perturbation router: derive the threshold from this target risk (U-HLM)"
    )
    reward_head: str | None = Field(None, description="path to a reward head (safetensors) or separate RM folder")
    check_reward_cloud: bool = Field(
        True, description="refuse a reward scorer trained against another cloud model than the configured one; "
        "set False when the server serves the same model under another name")

    @model_validator(mode="after")
    def _check(self) -> RouterConfig:
        finite_threshold(self.threshold)
        if self.rejection_risk is not None:
            if self.kind != "perturbation":
                raise ConfigError(f"rejection_risk applies to kind='perturbation', not {self.kind!r}.")
            # a threshold equal to the derived one is this validator's own output being re-validated
            if self.threshold is not None and self.threshold != self.rejection_risk:
                raise ConfigError("set either threshold or rejection_risk, not both: the risk derives the threshold.")
            self.threshold = self.rejection_risk  # U-HLM: P(reject | u) ~ u, see routing/uhlm.py
        scores = ROUTERS[self.kind].default_threshold is not None
        if scores and self.threshold is None:
            self.threshold = ROUTERS[self.kind].default_threshold
        if self.kind == "perturbation" and not 0.0 <= (self.threshold or 0.0) <= 1.0:
            raise ConfigError(f"perturbation threshold={self.threshold} must lie in [0, 1]; it is a disagreement rate.")
        if self.kind == "max_prob" and not 0.0 <= (self.threshold or 0.0) <= 1.0:
            raise ConfigError(f"max_prob threshold={self.threshold} must lie in [0, 1]; it is a probability.")
        if self.kind == "entropy" and (self.threshold or 0.0) < 0:
            raise ConfigError(f"entropy threshold={self.threshold} must be >= 0 (nats).")
        if not scores and (self.target_activation or self.max_cost_usd):
            raise ConfigError(
                f"target_activation / max_cost_usd need a scoring router, not '{self.kind}'; use e.g. 'entropy'."
            )
        if not scores and self.threshold is not None:
            warnings.warn(f"threshold={self.threshold} is ignored by the '{self.kind}' router.", stacklevel=2)
        return self
