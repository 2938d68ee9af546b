"""Torch tests: skipped cleanly without torch; one thread, offline Hugging Face.

pytest keeps a single ``conftest`` entry in ``sys.modules``; with this file imported last,
``from conftest import FLOAT64_TOL`` in the top-level tests would find this module. So the
top-level conftest's named tolerances are re-exported here unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest

torch = pytest.importorskip("torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# With 2 threads on a busy 2-core machine, steps were 50-100x slower in a prototype.
torch.set_num_threads(int(os.environ.get("LOGLINEAR_TORCH_THREADS", "1")))

_spec = importlib.util.spec_from_file_location(
    "_loglinear_root_conftest", pathlib.Path(__file__).resolve().parent.parent / "conftest.py")
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
for _name in dir(_root):
    if _name.isupper():
        globals()[_name] = getattr(_root, _name)

# dtype-tied tolerances for torch-vs-numpy parity
TORCH_F64_TOL = 1e-12
TORCH_F32_TOL = 1e-6
TORCH_BF16_TOL = 2e-2  # bf16 keeps 8 significant bits (unit roundoff 2^-9); a few ops each

# The device of the device-aware tests (test_device_parity.py): cpu unless
# LOGLINEAR_TORCH_DEVICE names another; benchmarks/gpu_check.py sets it to cuda.
TORCH_DEVICE = os.environ.get("LOGLINEAR_TORCH_DEVICE", "cpu")


@pytest.fixture(scope="session")
def torch_device() -> torch.device:
    device = torch.device(TORCH_DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"LOGLINEAR_TORCH_DEVICE={TORCH_DEVICE!r} but torch sees no CUDA device")
    return device
