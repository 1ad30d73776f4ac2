"""training/allocator.py: freed memory stays in the process (no page faults per batch), and the heavy entry
points (the Trainer, predict_batch, blend_runs) ask for it."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from kaggle_utils.inference import predict
from kaggle_utils.training import allocator

FAULTS = """
import resource
from kaggle_utils.training.allocator import keep_freed_memory
print(keep_freed_memory())
import torch
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 3, padding=1))
x = torch.rand(8, 3, 224, 224)  # the first conv's output: 51 MB, above glibc's adaptive mmap threshold (32 MB)
with torch.no_grad():
    net(x)
    net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != allocator.OPT_OUT}
    if env_value is not None:
        env[allocator.OPT_OUT] = env_value
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_without_page_faults():
    applied, tuned = _faults(None)
    assert applied == "True"
    opted_out, default = _faults("default")
    assert opted_out == "False"
    assert default > 50_000  # 5 forward passes mapping 51 MB + 51 MB afresh: ~250k faults here
    assert tuned < default / 5  # 0 here in most runs, 25k in a few


class _Tiny(nn.Module):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(1, 2, 3))

    def decode(self, out):
        return out


def test_predict_batch_asks_for_it(monkeypatch):
    calls = []
    monkeypatch.setattr(predict, "keep_freed_memory", lambda: calls.append(1))
    x = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    predict.predict_batch([_Tiny().eval()], x, _Tiny.mean, _Tiny.std, "hflip")
    assert calls


def test_blend_runs_asks_for_it(monkeypatch):
    from kaggle_utils.inference import ensemble
    from kaggle_utils.run.fixed_costs import stand_in_predictions

    calls = []
    monkeypatch.setattr(ensemble, "keep_freed_memory", lambda: calls.append(1))
    oof, test = stand_in_predictions(["a"], 50, 10, 2)
    ensemble.blend_runs(oof, test, test["a"]["id"], n_boot=2)
    assert calls
