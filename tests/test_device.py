"""r3rag.device decides device, autocast and dtypes for every stage; the CPU runs every branch of it here
(CUDA's presence is simulated where the decision depends on it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from r3rag import device as dev
from r3rag.llm.models import load_model
from tiny_llm import tiny_model, tiny_tokenizer


def test_auto_is_the_gpu_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device("cpu") == torch.device("cpu")


def test_a_missing_gpu_is_an_error_not_a_silent_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu or auto"):
        dev.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"torch sees 2 CUDA GPU\(s\)"):
        dev.resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "mps", "tpu:0", ""])
def test_unknown_devices_are_refused(name):
    with pytest.raises(ValueError, match="device"):
        dev.resolve_device(name)


def test_weights_are_bf16_only_where_nothing_trains_them():
    assert dev.weights_dtype(bf16=True, trained=False) == torch.bfloat16
    assert dev.weights_dtype(bf16=True, trained=True) == torch.float32
    assert dev.weights_dtype(bf16=False, trained=False) == torch.float32


CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: Example CPU 9000
flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile
"""


def test_cpu_features_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    assert dev.cpu_features(cpuinfo) == dev.CpuFeatures("Example CPU 9000", True, True)
    cpuinfo.write_text(CPUINFO.replace(" amx_bf16 amx_tile", "").replace(" avx512_bf16", ""))
    assert dev.cpu_features(cpuinfo) == dev.CpuFeatures("Example CPU 9000", False, False)
    assert dev.cpu_features(tmp_path / "missing").model == "unknown"


@pytest.fixture
def hardware(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has, or lacks, AVX-512 BF16 (and no AMX), and the GPU computes bf16 or emulates it."""

    def pretend(cpu_bf16: bool, gpu_bf16: bool = True) -> None:
        features = dev.CpuFeatures("Example CPU 9000", avx512_bf16=cpu_bf16, amx=False)
        monkeypatch.setattr(dev, "cpu_features", lambda: features)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpu_bf16)

    return pretend


CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_bf16_left_unset_is_on_only_where_the_device_computes_it_natively(hardware, monkeypatch):
    hardware(cpu_bf16=False, gpu_bf16=False)
    assert not dev.resolve_bf16(None, CPU) and not dev.resolve_bf16(None, GPU)
    hardware(cpu_bf16=True, gpu_bf16=True)
    assert dev.resolve_bf16(None, CPU) and dev.resolve_bf16(None, GPU)
    amx_only = dev.CpuFeatures("Xeon", avx512_bf16=False, amx=True)
    monkeypatch.setattr(dev, "cpu_features", lambda: amx_only)
    assert dev.resolve_bf16(None, CPU)


def test_bf16_set_is_kept_and_warned_about_where_it_would_be_emulated(hardware):
    hardware(cpu_bf16=False)
    with pytest.warns(UserWarning, match="no bf16 arithmetic"):
        assert dev.resolve_bf16(True, CPU)
    assert not dev.resolve_bf16(False, CPU)
    hardware(cpu_bf16=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dev.resolve_bf16(True, CPU)


def test_autocast_is_needed_while_any_weight_is_fp32():
    model = tiny_model()
    assert dev.needs_autocast(model, bf16=True)
    assert not dev.needs_autocast(model, bf16=False)
    model.to(torch.bfloat16)
    assert not dev.needs_autocast(model, bf16=True)
    model.lm_head.float()  # e.g. LoRA adapters in fp32 on a bf16 base
    assert dev.needs_autocast(model, bf16=True)


def test_gradient_checkpointing_defaults_on_above_a_billion_parameters(monkeypatch):
    model = tiny_model()
    parameters = sum(p.numel() for p in model.parameters())
    assert not dev.wants_gradient_checkpointing(None, model)
    assert dev.wants_gradient_checkpointing(True, model)
    monkeypatch.setattr(dev, "GRADIENT_CHECKPOINTING_PARAMETERS", parameters - 1)
    assert dev.wants_gradient_checkpointing(None, model)
    assert not dev.wants_gradient_checkpointing(False, model)


def test_checkpointed_layers_recompute_in_the_backward_pass_even_in_eval_mode():
    """PPO keeps its networks in eval mode (no dropout): the layers alone switch to training mode, so each
    layer runs twice per step (forward, then again in the backward pass), and the gradients are unchanged."""
    reference, model = tiny_model(), tiny_model()
    model.eval()
    dev.enable_gradient_checkpointing(model)
    assert not model.training and not model.model.layers[0].self_attn.training
    calls = []
    mlp = model.model.layers[0].mlp
    forward = mlp.forward
    mlp.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)  # hooks miss recomputes
    ids = torch.tensor([[3, 5, 7, 9]])
    for m in (reference.eval(), model):
        m(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == 2
    for (name, a), (_, b) in zip(reference.named_parameters(), model.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_models_load_in_the_dtype_asked(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_model(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_describe_names_the_device():
    assert dev.describe(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"


def test_weights_load_straight_onto_a_gpu_and_plainly_on_a_cpu():
    assert dev.loading_placement(None) == {} and dev.loading_placement(torch.device("cpu")) == {}
    assert dev.loading_placement(torch.device("cuda", 1)) == {"device_map": {"": torch.device("cuda", 1)}}
