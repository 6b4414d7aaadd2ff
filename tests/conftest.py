from pathlib import Path

import pytest
import torch

from clipsr_cli.model.clip import build_clip
from clipsr_cli.model.config import load_preset

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_preset("tiny")


@pytest.fixture(scope="session")
def tiny_clip(tiny_cfg):
    return build_clip(tiny_cfg)


@pytest.fixture
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): shared test data unavailable")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # never touch the user's cache, never try the network from tests
    monkeypatch.setenv("CLIPSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLIPSR_OFFLINE", "1")
    monkeypatch.delenv("CLIPSR_WEIGHTS_DIR", raising=False)
    torch.manual_seed(0)
