"""Pack what benchmarks/gpu.py needs on a GPU machine without internet into ``.gpu/`` (git-ignored).

The lent H200's image has PyTorch, transformers, peft, accelerate, numpy, scipy, tqdm, rich, typer and
PyYAML, but not the rest of r3rag's dependencies, and no model hub: this writes the wheels of the missing
ones (for that image's CPython 3.12 on x86-64, at the versions installed here) to ``.gpu/wheels`` and the
embedded SmolLM2 tokenizer to ``.gpu/tokenizer``, a few MB in all. Run there::

    pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
    PYTHONPATH=/tmp/site:src python3 benchmarks/gpu.py --tokenizer .gpu/tokenizer
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# r3rag imports tenacity at module level (llm/scheduler.py, reached from the PPO part's imports).
MISSING_THERE = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "bm25s",
    "PyStemmer",
    "tenacity",
)
PLATFORMS = (
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_34_x86_64",
)
OUT = Path(__file__).resolve().parents[1] / ".gpu"


def main() -> int:
    from r3rag.llm.models import EMBEDDED_POLICY, resolve_model

    shutil.rmtree(OUT, ignore_errors=True)
    pins = [f"{name}=={metadata.version(name)}" for name in MISSING_THERE]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + [
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(OUT / "wheels"),
            *pins,
        ],
        check=True,
    )
    source = Path(resolve_model(EMBEDDED_POLICY))
    (OUT / "tokenizer").mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, OUT / "tokenizer" / name)
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT}: {', '.join(pins)} and the tokenizer, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
