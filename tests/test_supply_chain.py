"""Supply chain: model weights load from safetensors only, and no model code from a folder or the hub runs
(``trust_remote_code`` stays off). The sha256 pins of installed models are tested in test_models.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from hybrid_llm_adapters.errors import ModelIntegrityError
from hybrid_llm_adapters.local import slm


def test_pickled_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    for st in folder.glob("*.safetensors"):
        torch.save(load_file(st), folder / "pytorch_model.bin")
        st.unlink()
    with pytest.raises(ModelIntegrityError, match=r"no \.safetensors weights; pickled weights .* refused\. Fix"):
        slm.load_local_model(folder)


def test_loading_asks_for_safetensors_and_no_remote_code(tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real_model = slm.AutoModelForCausalLM.from_pretrained
    real_tok = slm.AutoTokenizer.from_pretrained

    def model(path: str, **kw: Any) -> Any:
        seen.append(kw)
        return real_model(path, **kw)

    def tokenizer(path: str, **kw: Any) -> Any:
        seen.append(kw)
        return real_tok(path, **kw)

    monkeypatch.setattr(slm.AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(slm.AutoTokenizer, "from_pretrained", tokenizer)
    slm._load.__wrapped__(str(tiny_model_dir), "bfloat16")  # past the per-process cache
    assert [kw.get("trust_remote_code") for kw in seen] == [False, False]
    assert seen[1].get("use_safetensors") is True


def test_no_trust_remote_code_anywhere() -> None:
    """No code path turns remote code on: the flag appears only as False."""
    root = Path(slm.__file__).resolve().parents[1]
    for path in [*root.rglob("*.py"), *(root.parent / "integrations").rglob("*.py")]:
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
