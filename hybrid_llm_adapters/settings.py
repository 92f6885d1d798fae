"""The user-facing settings, one name and one default each.

Both adapters (their constructor fields carry these names) and both CLIs (``--model``, ``--base-url``, ...)
build their engine and decode settings through ``HybridSettings``, so a setting means the same thing, with the
same default, everywhere: ``engine_config()`` for what defines the shared engine, ``generation_config()`` for
one request.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .config import (
    DEFAULT_SLM,
    ROUTERS,
    CloudConfig,
    CloudMode,
    FallbackPolicy,
    GenerationConfig,
    PriceTable,
    RouterConfig,
    RouterKind,
    finite_threshold,
    positive_tokens,
    refuse_unknown_settings,
)

# settings a single call may override (LangChain's invoke kwargs, LlamaIndex's chat kwargs)
PER_CALL = ("max_tokens", "temperature", "top_p", "seed", "stop", "cloud_mode", "max_cost_ratio", "handoff")


class HybridSettings(BaseModel):
    """What a user sets: the SLM, the cloud, the router, the prices and the decode defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(DEFAULT_SLM, description="the on-device SLM: catalog name, local folder or HF id")
    base_url: str | None = Field(None, description="the cloud's OpenAI-compatible endpoint; None: "
                                 "$HYBRID_LLM_CLOUD_URL or http://127.0.0.1:8765/v1")
    cloud_model: str | None = Field(None, description="the cloud model's name; None: $HYBRID_LLM_CLOUD_MODEL or "
                                    "qwen2.5-coder-1.5b-instruct")
    api_key: SecretStr | None = Field(None, repr=False, description="cloud API key; None: $HYBRID_LLM_API_KEY, "
                                      "$OPENAI_API_KEY or 'EMPTY'")
    router: RouterKind = Field("entropy", description="who decides local vs cloud per token")
    threshold: float | None = Field(None, description="router threshold; None: the router's default")
    reward_head: str | None = Field(None, description="reward head file or reward-model folder (router reward)")
    timeout: float = Field(120.0, gt=0, description="seconds per cloud HTTP request")
    max_retries: int = Field(2, ge=0, description="retries of transient cloud errors")
    on_cloud_failure: FallbackPolicy = Field("raise", description="after retries: 'raise' a CloudError (with the "
                                             "text so far) or continue 'local'")
    prices: PriceTable | None = Field(None, description="USD price table and cache rules; None: the core's "
                                      "illustrative default (PriceTable.preset(...) for the shipped examples)")
    dtype: str = Field("bfloat16", description="SLM dtype")
    cloud_mode: CloudMode | None = Field(None, description="auto, replace, verify, block_verify, lookahead; "
                                         "None: the core's default (auto)")
    max_cost_ratio: float | Literal["auto"] | None = Field(
        "auto", description="cost guard: never above this multiple of the cloud-only cost (auto: 1.0 on a "
        "pay-per-token price table, off self-hosted; None: off)")
    handoff: Literal["auto", "on", "off"] = Field(
        "auto", description="the cloud finishes the answer in one streamed call when the router flags densely "
        "(auto: on for a pay-per-token price table)")
    max_tokens: int = Field(256, description="maximum new tokens per answer (>= 1)")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    generation_options: dict[str, Any] = Field(default_factory=dict, description="further GenerationConfig "
                                               "fields, e.g. {'draft_tokens': 8}")
    router_options: dict[str, Any] = Field(default_factory=dict, description="further RouterConfig fields, e.g. "
                                           "{'target_activation': 0.2}")
    cloud_options: dict[str, Any] = Field(default_factory=dict, description="further CloudConfig fields, e.g. "
                                          "{'logprobs': 10}")

    @model_validator(mode="before")
    @classmethod
    def _known_settings(cls, data: Any) -> Any:
        refuse_unknown_settings(data, cls)
        return data

    @field_validator("threshold")
    @classmethod
    def _finite_threshold(cls, v: float | None) -> float | None:
        return finite_threshold(v)

    @field_validator("max_tokens")
    @classmethod
    def _positive_tokens(cls, v: int) -> int:
        return positive_tokens(v)  # type: ignore[return-value]

    @classmethod
    def of(cls, obj: Any, renames: dict[str, str] | None = None) -> HybridSettings:
        """The settings an adapter object carries: its fields of these names (``renames``: setting -> field)
        that were set explicitly, so that a default means the same thing in every adapter."""
        renames = renames or {}
        explicit = getattr(obj, "model_fields_set", None)
        values = {}
        for name in cls.model_fields:
            attr = renames.get(name, name)
            if not hasattr(obj, attr) or (explicit is not None and attr not in explicit):
                continue
            value = getattr(obj, attr)
            if value is None and type(None) not in get_args(cls.model_fields[name].annotation):
                continue  # None where the setting takes no None (max_tokens=None) means "the default"
            values[name] = value
        return cls(**values)

    def engine_config(self) -> Any:
        """What defines the shared engine (equal settings, equal config, one engine)."""
        from .engine import EngineConfig

        cloud: dict[str, Any] = {"timeout": self.timeout, "max_retries": self.max_retries,
                                 "on_failure": self.on_cloud_failure}
        for name, key in (("base_url", "base_url"), ("cloud_model", "model"), ("api_key", "api_key")):
            if getattr(self, name) is not None:
                cloud[key] = getattr(self, name)
        cloud.update(self.cloud_options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "threshold ignored by a router that does not score" is no news
            router = RouterConfig(kind=self.router, reward_head=self.reward_head, **self.router_options,
                                  threshold=self.threshold if ROUTERS[self.router].default_threshold is not None
                                  else None)
        return EngineConfig(slm=self.model, router=router, cloud=CloudConfig(**cloud),
                            prices=self.prices or PriceTable(), dtype=self.dtype)

    def generation_config(self, **per_call: Any) -> GenerationConfig:
        """One request's decode settings. Precedence: a call's argument (``PER_CALL`` names; None leaves it),
        then a field set explicitly, then ``generation_options``, then the field's default."""
        unknown = set(per_call) - set(PER_CALL)
        if unknown:
            raise TypeError(f"not per-call settings: {sorted(unknown)}; per call: {list(PER_CALL)}")
        values: dict[str, Any] = {name: getattr(self, name) for name in PER_CALL}
        values.update(self.generation_options)
        values.update({name: getattr(self, name) for name in PER_CALL if name in self.model_fields_set})
        values.update({k: v for k, v in per_call.items() if v is not None})
        if "max_new_tokens" not in self.generation_options or "max_tokens" in self.model_fields_set | set(per_call):
            values["max_new_tokens"] = values["max_tokens"]
        del values["max_tokens"]
        if values.get("cloud_mode") is None:
            values.pop("cloud_mode", None)  # the core's default
        return GenerationConfig(**values)
