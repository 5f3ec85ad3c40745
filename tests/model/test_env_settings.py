"""msclip's environment settings: a mistyped value is warned about (once) and read as the
default, never taken silently for another setting."""

from __future__ import annotations

import warnings

import pytest
import torch

from msclip.architecture import FUSED_ENV, IMPL_ENV, fused_dtypes, use_native
from msclip.errors import MSCLIPWarning
from msclip.hardware import env_setting


def test_mistyped_settings_warn_once_and_mean_the_default(monkeypatch) -> None:
    monkeypatch.setenv(FUSED_ENV, "None")
    with pytest.warns(MSCLIPWarning, match=r"FUSED_CPU='None' is not one of 0, 1, off, .*all"):
        assert fused_dtypes() == (torch.bfloat16,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same value again: no second warning
        assert fused_dtypes() == (torch.bfloat16,)
    monkeypatch.setenv(FUSED_ENV, " ALL ")
    assert fused_dtypes() == (torch.bfloat16, torch.float32)
    monkeypatch.setenv(FUSED_ENV, "off")  # the usual spellings of off mean off
    assert fused_dtypes() == ()
    monkeypatch.setenv(IMPL_ENV, "openclp")
    with pytest.warns(MSCLIPWarning, match="MSCLIP_CLIP_IMPL"):
        assert use_native({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}) in (True, False)
    monkeypatch.setenv("MSCLIP_WEIGHT_CACHE", "maybe")
    with pytest.warns(MSCLIPWarning, match="MSCLIP_WEIGHT_CACHE='maybe'"):
        assert env_setting("MSCLIP_WEIGHT_CACHE", "1", ("0", "1")) == "1"
    monkeypatch.setenv("MSCLIP_WEIGHT_CACHE", "")
    assert env_setting("MSCLIP_WEIGHT_CACHE", "1", ("0", "1")) == "1"
