"""Pack the wheels a GPU machine without network access needs for bench/pretrain.py.

The lent GPU machines run a CUDA PyTorch image with no Ray, MLflow or pydantic and fetch nothing;
what they need travels with the checkout, at most 64 MiB a call. The Ray wheel alone is ~76 MiB,
so the wheels are cut into bins of at most 58 MiB (a file larger than that in pieces) under
.whl/1, .whl/2, ..., each carried by one call; a MANIFEST in every bin lists every piece, and
bench/device/install_wheels.sh installs once all bins have arrived:

    python bench/device/pack_wheels.py                  # here, with network access to PyPI
    call 1, carry [.whl/1]:  bash bench/device/install_wheels.sh || true   # "waiting for .whl/2"
    call 2, carry [.whl/2]:  bash bench/device/install_wheels.sh && PYTHONPATH=/tmp/site:. python3 bench/pretrain.py --device cuda

A checkout keeps what an earlier call carried while the machine stays up, so call 2 finds .whl/1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN_BYTES = 58 * 2**20  # leaves room for the checkout itself under the 64 MiB a call carries
PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35))]


def download(requirements: Path, into: Path, python_version: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--implementation", "cp", "--python-version", python_version, *platforms, "-d", str(into), "-r", str(requirements)],
        check=True,
    )


def pieces(wheels: Path) -> list[Path]:
    """Every wheel, those over a bin's size cut into NAME.part-000, NAME.part-001, ..."""
    out = []
    for wheel in sorted(wheels.glob("*.whl")):
        if wheel.stat().st_size <= BIN_BYTES:
            out.append(wheel)
            continue
        with wheel.open("rb") as src:
            for i, chunk in enumerate(iter(lambda: src.read(BIN_BYTES), b"")):
                piece = wheel.with_name(f"{wheel.name}.part-{i:03d}")
                piece.write_bytes(chunk)
                out.append(piece)
        wheel.unlink()
    return out


def pack(files: list[Path]) -> list[list[Path]]:
    """First-fit decreasing into bins of at most BIN_BYTES."""
    bins: list[tuple[int, list[Path]]] = []
    for f in sorted(files, key=lambda f: f.stat().st_size, reverse=True):
        size = f.stat().st_size
        for i, (used, members) in enumerate(bins):
            if used + size <= BIN_BYTES:
                bins[i] = (used + size, [*members, f])
                break
        else:
            bins.append((size, [f]))
    return [members for _, members in bins]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requirements", type=Path, default=Path(__file__).with_name("requirements.txt"))
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    parser.add_argument("--python-version", default="3.12", help="the device's Python")
    opts = parser.parse_args()
    for earlier in [*opts.out.glob("[0-9]*"), opts.out / "download"]:  # only what an earlier packing made
        if earlier.is_dir():
            shutil.rmtree(earlier)
    staging = opts.out / "download"
    download(opts.requirements, staging, opts.python_version)
    bins = pack(pieces(staging))
    manifest = "".join(f"{n} {f.name}\n" for n, members in enumerate(bins, start=1) for f in members)
    for n, members in enumerate(bins, start=1):
        target = opts.out / str(n)
        target.mkdir()
        for f in members:
            f.rename(target / f.name)
        (target / "MANIFEST").write_text(manifest)
        size = sum(f.stat().st_size for f in target.iterdir())
        print(f"{target}: {len(members)} files, {size / 2**20:.1f} MiB")
    staging.rmdir()


if __name__ == "__main__":
    main()
