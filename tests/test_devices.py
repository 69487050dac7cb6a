"""Device choice: cuda when Ray assigned a GPU and CUDA works, the CPU otherwise; a learner process keeps the
memory it frees; the CPU model a run names."""

import platform
import subprocess
import sys

import pytest
import torch

from umpo_dist.devices import cpu_kind, cpu_model, select_device


def test_cpu_without_assigned_gpus():
    assert select_device([]) == torch.device("cpu")


def test_cuda_when_a_gpu_is_assigned(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(["0"]) == torch.device("cuda")
    assert select_device([]) == torch.device("cpu")


def test_assigned_gpu_without_cuda_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(["0"]) == torch.device("cpu")


def test_outside_ray_follows_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(None) == torch.device("cpu")


# A learner's update in small: activations of a few MB each, all held until its end, then freed; glibc's
# mallinfo2 then says how much of the freed memory the process still holds for the next update.
_ALLOCATE_AND_FREE = """
import ctypes, sys, torch
from umpo_dist.devices import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
kept = sys.argv[1] == "kept" and keep_freed_memory()
held = [torch.ones(1 << 20) for _ in range(20)]  # 20 blocks of 4 MiB
del held
print(kept, mallinfo2().fordblks >> 20)
"""


def _free_after_an_update(allocator: str) -> tuple[bool, int]:
    """(whether the allocator setting took, MiB of freed memory the process still holds)."""
    out = subprocess.run([sys.executable, "-c", _ALLOCATE_AND_FREE, allocator], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_learners_keep_the_memory_they_free_for_the_next_update():
    applied, kept = _free_after_an_update("kept")
    assert applied
    assert kept >= 80  # all 20 blocks, ready for the next update without page faults
    _, default = _free_after_an_update("default")
    assert default < 8  # glibc by itself hands them back to the OS, to be faulted in again


def test_cpu_model_reads_the_first_model_name(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert cpu_model(str(info)) == "AMD EPYC 7B13"
    # no such file (not Linux), or no model name in it: what `platform` knows, else 'unknown'
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert cpu_model(str(tmp_path / "missing")) == "arm"
    info.write_text("processor\t: 0\nmodel name\t:\n")
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert cpu_model(str(info)) == "unknown"


def test_cpu_kind_names_the_model_and_torch_kernel_level(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_kind() == f"{cpu_model()} (AVX512)"
