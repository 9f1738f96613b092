"""Model name resolution, the once-only cached GGUF conversion, and (smoke) the real embedded SmolLM2."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from r3rag.llm import models
from r3rag.llm.models import EMBEDDED_POLICY, convert_gguf, resolve_model


def test_local_folder_hub_id_and_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(tmp_path) == str(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(tmp_path.parent)
    with pytest.raises(FileNotFoundError, match="is not 'smollm2-135m-instruct'"):
        resolve_model("no-such-model")


def fake_dequantise(calls: list[str], seconds: float = 0.0, fail: bool = False):
    def dequantise(gguf: Path, out_dir: Path) -> None:
        calls.append(str(out_dir))
        (out_dir / "model.safetensors").write_text("weights")
        time.sleep(seconds)
        if fail:
            raise RuntimeError("disk full")
        (out_dir / "config.json").write_text("{}")

    return dequantise


def test_two_concurrent_conversions_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(models, "_dequantise", fake_dequantise(calls, seconds=0.3))
    out = tmp_path / "cache" / "m"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(convert_gguf(Path("x.gguf"), out))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [out, out]
    assert len(calls) == 1
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in out.parent.iterdir() if ".tmp-" in p.name] == []


def test_a_failed_conversion_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m"
    monkeypatch.setattr(models, "_dequantise", fake_dequantise([], fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gguf(Path("x.gguf"), out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    (tmp_path / ".m.tmp-crashed").mkdir()  # what a killed process leaves behind
    calls: list[str] = []
    monkeypatch.setattr(models, "_dequantise", fake_dequantise(calls))
    assert convert_gguf(Path("x.gguf"), out) == out
    assert len(calls) == 1 and not (tmp_path / ".m.tmp-crashed").exists()


def test_a_local_gguf_is_converted_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3RAG_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []
    monkeypatch.setattr(models, "_dequantise", fake_dequantise(calls))
    gguf = tmp_path / "my-model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    first, again = resolve_model(gguf), resolve_model(gguf)
    assert first == again and len(calls) == 1
    assert Path(first).parent == tmp_path / "cache" / "models"
    assert Path(first).name.startswith("my-model.Q4-")


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("R3RAG_CACHE", str(tmp_path))
    assert models.cache_root() == tmp_path
    monkeypatch.delenv("R3RAG_CACHE")
    assert models.cache_root() == Path.home() / ".cache" / "r3rag"


@pytest.mark.smoke
def test_embedded_smollm2_writes_a_step() -> None:
    from r3rag.llm.base import SamplingParams
    from r3rag.llm.hf import HFGenerator
    from r3rag.steps import build_messages, parse_step

    generator = HFGenerator.from_name(EMBEDDED_POLICY, bf16=True)
    assert generator.eos_ids == {generator.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    question = "Who directed the film that won Best Picture in 2008?"
    (completion,) = generator.generate([build_messages(question)], SamplingParams(max_new_tokens=48))
    assert completion.text.strip()
    assert completion.finish_reason in {"stop", "length"}
    assert 0 < completion.completion_tokens <= 48
    words = set(completion.text.lower().replace('"', " ").split())
    assert words & {"film", "picture", "best", "director", "directed", "2008"}  # English about the question
    assert parse_step(completion.text, expected_index=1).raw == completion.text  # any output parses to a Step
