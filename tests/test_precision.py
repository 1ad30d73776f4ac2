"""What amp/channels_last "auto" pick (training/precision.py), and that the Trainer and inference follow it:
channels_last on the CPU (1.85x faster training here), fp32 unless amp is asked for (then bf16), fp16 on CUDA."""

import pytest
import torch
from train_helpers import register_tiny_model, resized_table

from kaggle_utils.training import precision
from kaggle_utils.training.config import TrainConfig
from kaggle_utils.training.loop import Trainer


@pytest.fixture(scope="module")
def tiny_table(shared_data, tmp_path_factory):
    register_tiny_model()
    return resized_table(shared_data, tmp_path_factory.mktemp("img64"), n=20, size=64)


def test_cpu_auto_is_fp32_channels_last_and_amp_true_means_bf16():
    auto = precision.resolve(torch.device("cpu"))
    assert (auto.amp, auto.channels_last) == (False, True)
    asked = precision.resolve(torch.device("cpu"), amp=True, amp_dtype="float16")
    assert asked.amp and asked.dtype == torch.bfloat16  # CPU fp16 autocast is slower than fp32
    off = precision.resolve(torch.device("cpu"), channels_last=False)
    assert not off.channels_last


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), torch.float16), ((6, 0), torch.float16),
                                                    ((8, 9), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_cuda_auto_is_fp16_on_a_t4_and_bf16_where_the_gpu_has_it(monkeypatch, capability, dtype):
    """T4 (7.5) and P100 (6.0): fp16 autocast (the Trainer adds a GradScaler); L4 (8.9), H100 (9.0): bf16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    gpu = precision.resolve(torch.device("cuda"))
    assert gpu.amp and gpu.dtype == dtype and gpu.channels_last
    assert ("GradScaler" in gpu.why) == (dtype == torch.float16)
    assert precision.resolve(torch.device("cuda"), amp_dtype="bfloat16").dtype == torch.bfloat16
    assert precision.resolve(torch.device("cuda"), amp_dtype="float16").dtype == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_cuda_auto_falls_back_to_fp16():
    assert precision.cuda_has_native_bf16(torch.device("cuda")) is False  # no GPU on the machines that test


@pytest.mark.parametrize(("amp", "layout", "expected"), [
    ("auto", "auto", (False, torch.float32, True)),
    (True, False, (True, torch.bfloat16, False)),
])
def test_trainer_follows_the_resolved_precision(tiny_table, tmp_path, amp, layout, expected):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model="tiny-cnn-test", pretrained=False, size=64, epochs=1,
                      batch_size=4, num_workers=0, progress=False, augmentation="none", device="cpu", amp=amp,
                      channels_last=layout)
    trainer = Trainer(cfg, tiny_table)
    dtype = trainer.amp_dtype if trainer.amp else torch.float32
    assert (trainer.amp, dtype, trainer.channels_last) == expected
    weight = next(p for p in trainer.net.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) == expected[2]
