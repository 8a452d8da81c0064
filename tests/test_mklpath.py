"""MKL's Intel code path (tokenrl.mklpath): when it is taken, the restart that takes it, and
that it leaves results the same to float rounding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tokenrl import mklpath

needs_cc = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or shutil.which("cc") is None
    and shutil.which("gcc") is None,
    reason="the preload library needs Linux and a C compiler (cc or gcc)",
)


def test_taken_only_when_chosen(monkeypatch):
    monkeypatch.delenv(mklpath.SWITCH, raising=False)
    monkeypatch.setattr(mklpath.sys, "platform", "linux")
    monkeypatch.setattr(mklpath, "cpu_vendor", lambda: "AuthenticAMD")
    assert mklpath.why_not() == (  # opt-in: it rounds fp32 differently from MKL's own path
        "not chosen (TOKENRL_MKL_INTEL_PATH=1 takes it: faster fp32, rounded differently)"
    )
    monkeypatch.setenv(mklpath.SWITCH, "0")
    assert mklpath.why_not().startswith("not chosen (")
    monkeypatch.setattr(mklpath, "cpu_vendor", lambda: "GenuineIntel")
    assert mklpath.why_not() == "not chosen, and not an AMD CPU (GenuineIntel)"
    monkeypatch.setenv(mklpath.SWITCH, "1")  # chosen: any CPU on Linux
    assert mklpath.why_not() is None
    monkeypatch.setattr(mklpath, "cpu_vendor", lambda: "AuthenticAMD")
    assert mklpath.why_not() is None
    monkeypatch.setattr(mklpath.sys, "platform", "darwin")
    assert mklpath.why_not() == "not Linux"


def test_no_compiler_no_library(monkeypatch, tmp_path):
    monkeypatch.setattr(mklpath.shutil, "which", lambda name: None)
    assert mklpath.library_path(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_no_restart_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401 (loaded: a preload can no longer replace MKL's function)

    monkeypatch.setenv(mklpath.SWITCH, "1")
    monkeypatch.delenv(mklpath._RESTARTED, raising=False)
    monkeypatch.setattr(mklpath.os, "execv", lambda *a: pytest.fail("restarted after torch loaded"))
    mklpath.restart_with_intel_path()


@needs_cc
def test_library_built_once_and_exports_the_check(tmp_path):
    import ctypes

    lib = mklpath.library_path(tmp_path)
    assert lib is not None and lib.parent == tmp_path
    assert ctypes.CDLL(str(lib)).mkl_serv_intel_cpu_true() == 1
    mtime = lib.stat().st_mtime_ns
    assert mklpath.library_path(tmp_path) == lib and lib.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [lib.name]  # no build folder left behind


PROBE = """
import json, sys
from tokenrl.mklpath import restart_with_intel_path, intel_path_status
restart_with_intel_path()
import torch
from tokenrl.models import build_tiny
torch.manual_seed(0)
model, tok = build_tiny("tiny")
ids = torch.tensor([list(b"12*34=")])
with torch.no_grad():
    logits = model(ids).logits[0]
    greedy = model.generate(ids, max_new_tokens=12, do_sample=False)[0].tolist()
x, w = torch.randn(8, 896), torch.randn(4864, 896)
print(json.dumps({"status": intel_path_status(), "logits": logits.flatten().tolist(),
                  "greedy": greedy, "product": torch.nn.functional.linear(x, w).flatten().tolist()}))
"""


def _probe(tmp_path, choice: str) -> dict:
    env = dict(os.environ, TOKENRL_CACHE=str(tmp_path), **{mklpath.SWITCH: choice})
    env.pop(mklpath._RESTARTED, None)
    env.pop("LD_PRELOAD", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_cc
def test_restart_takes_the_path_and_results_stay_the_same(tmp_path):
    """The process restarts itself with the library preloaded (forced with ``1`` so this runs on
    any CPU; on an Intel CPU the answer is the same as MKL's own). The tiny model's logits and
    greedy tokens, and a product at a decode step's shape, agree with the default path's to
    float rounding."""
    default, intel = _probe(tmp_path, "0"), _probe(tmp_path, "1")
    assert default["status"] == {
        "active": False,
        "why_not": mklpath.why_not(),  # not chosen (=0); the reason names the CPU
    }
    assert intel["status"] == {"active": True}
    assert intel["greedy"] == default["greedy"]
    for key, tol in (("logits", 1e-4), ("product", 1e-4)):
        ref, new = default[key], intel[key]
        scale = max(abs(v) for v in ref)
        assert max(abs(a - b) for a, b in zip(ref, new, strict=True)) <= tol * scale
