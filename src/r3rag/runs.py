"""Run folders: what every stage that writes a folder shares (cold start, SFT, PPO, evaluation, quickstart).

- **Binding.** A folder holds the settings it ran with. Running other settings there is refused with one
  message that names every dotted field that differs (``sft.learning_rate: 0.0002 -> 0.0001``), except the
  fields a stage declares safe to change on resume; a folder that holds nothing to resume is simply rebound.
- **Locking.** One process writes a folder at a time: a second one is refused at once, naming the first's
  pid, instead of interleaving its lines with the first's (an advisory ``fcntl`` lock, released by the
  kernel when the holder dies, so a crash never leaves a stale lock).
- **Atomic writes.** A file or a folder is written beside its final name and renamed into place, so what
  exists under the final name is complete.
- **Checkpoints** resume exactly: a stage's state plus every random-number generator (Python, NumPy, torch on
  the CPU and on every CUDA device), in ``<label>-<step>/`` folders of which the newest ``keep`` are kept.
- **Derived seeds**: independent random streams named by purpose, the same whatever else ran before.
- **Peak memory**: host RSS and the accelerator's peak, for logs and benchmarks.

Nothing here knows a stage: stages pass their config, the fields they let change, and what they save.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import re
import resource
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import BaseModel, TypeAdapter

from r3rag.config import StageConfig

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".r3rag.lock"
STATE_FILE = "state.pt"
_SHOWN_DIFFERENCES = 8
_FINGERPRINT_CHUNK = 1 << 20
_CHECKPOINT = re.compile(r"^(?P<label>[a-z]+)-(?P<step>\d+)$")


class RunFolderError(ValueError):
    """A folder that cannot take this run: another run's settings, or another process writing to it."""


# ------------------------------------------------------------------------------------------------ binding


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``field: old -> new`` for every leaf that differs, with dotted names (``sft.learning_rate``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in [*new, *(k for k in old if k not in new)]:
            name = f"{prefix}.{key}" if prefix else str(key)
            found += config_differences(old.get(key), new.get(key), name)
        return found
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def refuse_differences(folder: Path, changed: list[str], hint: str) -> None:
    """Raise the one refusal message: the folder, the first few differences, and what to do instead."""
    if not changed:
        return
    shown = "; ".join(changed[:_SHOWN_DIFFERENCES])
    more = f"; and {len(changed) - _SHOWN_DIFFERENCES} more" if len(changed) > _SHOWN_DIFFERENCES else ""
    raise RunFolderError(f"{folder} holds a run with other settings ({shown}{more}); {hint}")


def bind(
    folder: Path,
    config: StageConfig | Mapping[str, Any],
    *,
    holds_results: bool,
    may_change: Collection[str] = (),
    file: str = CONFIG_FILE,
    hint: str = "resume it with the same settings, or use another --out",
) -> None:
    """Bind ``folder`` to ``config`` (a stage's config, or a mapping of what else identifies the run, such
    as the index it read): write it as ``file``, or refuse if the folder's results came from other settings.

    ``holds_results`` says whether the folder has anything a run would resume from (a checkpoint, appended
    results); without it the folder is rebound to the new settings, unless it is another command's folder.
    ``may_change`` names fields (dotted for nested ones) that may differ on resume because they do not change
    what was computed.
    """
    path = folder / file
    new = config.model_dump(mode="json") if isinstance(config, StageConfig) else dict(config)
    if path.is_file():
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise RunFolderError(f"{path}: not readable YAML ({e}); use another --out") from None
        if not isinstance(old, dict) or len(set(old) & set(new)) * 2 < len(new):
            raise RunFolderError(
                f"{folder} holds another kind of run (its {file} is not the settings of this command); "
                "use another --out"
            )
        if holds_results:
            if isinstance(
                config, StageConfig
            ):  # settings added since the folder was made ran as their defaults
                old = with_defaults(old, config)
            changed = [line for line in config_differences(old, new) if not _may_change(line, may_change)]
            refuse_differences(folder, changed, hint)
    write_text(path, yaml.safe_dump(new, sort_keys=False))


def with_defaults(old: dict[str, Any], config: BaseModel) -> dict[str, Any]:
    """``old`` (a config as a folder recorded it) with every field it lacks set to that field's default in
    ``config``'s model, nested sections included: a run made before a setting existed ran as its default, so
    an upgrade that adds a setting does not make the folder another run. (A default that changed is still a
    difference: the folder's run used the old one.)"""
    filled = dict(old)
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        if name not in filled:
            if info.is_required() or info.annotation is None:
                continue
            default = info.get_default(call_default_factory=True, validated_data={})
            filled[name] = TypeAdapter(info.annotation).dump_python(default, mode="json")
        elif isinstance(value, BaseModel) and isinstance(filled[name], dict):
            filled[name] = with_defaults(filled[name], value)
    return filled


def _may_change(difference: str, may_change: Collection[str]) -> bool:
    """Whether a ``field: old -> new`` line is about one of ``may_change`` (or a field nested in one)."""
    return any(difference.startswith((f"{name}:", f"{name}.")) for name in may_change)


# ------------------------------------------------------------------------------------------------ locking


@contextmanager
def locked(folder: Path, wait: bool = False, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold ``folder``'s lock (the file ``name`` in it) for the duration; refuse at once, naming the holder,
    if another process has it, or, with ``wait``, wait for it (a shared cache a second process would only
    fill again).

    The lock file stays behind (deleting it would let two processes lock two different files); the lock
    itself dies with its process.
    """
    if folder.exists() and not folder.is_dir():  # mkdir would say "File exists", which misleads
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunFolderError(
                f"{folder} is in use by another r3rag process (pid {holder}); wait for it to finish, "
                "or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def locked_beside(path: Path) -> AbstractContextManager[None]:
    """The lock of something replaced whole (an index folder, a results file) or shared as data (a world,
    converted datasets), whose folder should hold nothing else: ``.<name>.lock`` beside it."""
    return locked(path.parent, name=f".{path.name}.lock")


# ------------------------------------------------------------------------------------------ atomic writes


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; rename it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as handle:
        handle.write(text)


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` (``.<name>.tmp-*``) to fill; it replaces ``final`` when the block
    succeeds and is removed when it fails, so a folder under the final name is always complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_into_place(folder: Path, final: Path) -> None:
    """Rename a finished ``folder`` to ``final``, replacing what is there (moved aside, then deleted)."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(folder, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(folder, final)


# ------------------------------------------------------------------------------------------- checkpoints


def rng_state() -> dict[str, Any]:
    """Every random-number generator a training step may draw from."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (the CUDA states only where CUDA is there to take them)."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(root: Path, label: str) -> list[Path]:
    """The complete checkpoints ``<label>-<step>`` under ``root`` (those with their state file), oldest
    first; another stage's checkpoints are not this one's."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group("step")), p)
        for p in root.iterdir()
        if (m := _CHECKPOINT.match(p.name)) and m.group("label") == label and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path, label: str) -> Path | None:
    """The complete checkpoint ``<label>-*`` with the highest step, or None."""
    found = checkpoints(root, label)
    return found[-1] if found else None


def save_checkpoint(
    root: Path,
    label: str,
    step: int,
    state: dict[str, Any],
    keep: int,
    write_files: Callable[[Path], None] | None = None,
    digits: int = 6,
) -> Path:
    """Write checkpoint ``<label>-<step>`` atomically: ``write_files`` fills the folder (a model saved with
    ``save_pretrained``, say), then ``state`` goes into its state file with ``step`` and the RNG states.
    Keep the newest ``keep`` checkpoints."""
    import torch

    final = root / f"{label}-{step:0{digits}d}"
    with atomic_folder(final) as tmp:
        if write_files is not None:
            write_files(tmp)
        torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    for old in checkpoints(root, label)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state, with the random-number generators restored to where it was saved.

    Tensors are read onto the host: a run saved on a GPU resumes on another device too (``load_state_dict``
    of a model or an optimizer copies them to where its parameters are)."""
    import torch

    from r3rag.device import HOST

    state = torch.load(path / STATE_FILE, weights_only=False, map_location=HOST)
    set_rng_state(state["rng"])
    return state


# ---------------------------------------------------------------------------------------------- identity


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_FINGERPRINT_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_fingerprint(folder: str | Path) -> str:
    """A fast fingerprint of a model folder: every file's name and size, and a hash of its first and last
    MiB. Weights that differ anywhere near their start or end (any fine-tuning does) change it; hashing every
    byte of a 15 GB checkpoint would take a minute for the same answer."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as f:
            digest.update(f.read(_FINGERPRINT_CHUNK))
            if size > 2 * _FINGERPRINT_CHUNK:
                f.seek(-_FINGERPRINT_CHUNK, 2)
                digest.update(f.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ seeds, memory


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a run seed and a purpose (``derive_seed(seed, "rollout", 3)``): independent streams
    that depend only on their names, so a resumed run or a batch of another size draws exactly the same."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory() -> dict[str, float]:
    """Peak host RSS and, where CUDA is in use, the peak GPU memory allocated by torch, in GB."""
    import torch

    figures = {"memory/peak_rss_gb": peak_rss_bytes() / 1e9}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["memory/peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return figures
