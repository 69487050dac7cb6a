"""Device choice: cuda when Ray assigned a GPU and CUDA works, the CPU otherwise."""

import torch

from umpo_dist.devices import select_device


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
