"""The CUDA kernels' per-item code, run on the CPU.

The elementwise CUDA kernels (latent_concat, detail_project, detail_align_loss) are grid-stride
loops around functions of the vector index in csrc/include/davae_ext/plane_vectors.h, and their
index divisions go through divmod.h; the patch embed's gather / scatter runs patch_tile.h's phases
with 256 threads a block, and the backward's d_pos / d_bias pass runs pos_grad.h per thread.
tests/cpp/kernel_items.cpp runs exactly those functions on the CPU, the tiles as a 256-thread block
distributes them, against direct computations, with the latents contiguous and as strided views of
one latent (planes.h). This is how those kernels are tested on a machine without a GPU (the CUDA
op tests cover the launches on one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cpp" / "kernel_items.cpp"
SECTIONS = ["divmod", "concat", "project", "align", "patch_tile", "pos_grad"]


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def kernel_items(tmp_path_factory) -> Path:
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, c++, g++ or clang++) on PATH")
    if not (ROOT / "csrc" / "include").is_dir():
        pytest.skip("needs the source tree's csrc/include")
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    std = "c++20" if (major, minor) >= (2, 13) else "c++17"  # what torch's headers were built for
    exe = tmp_path_factory.mktemp("kernel_items") / "kernel_items"
    torch_include = Path(torch.__file__).parent / "include"
    cmd = [cxx, f"-std={std}", "-O1", "-Wall", "-Wno-unknown-pragmas", "-I", str(ROOT / "csrc" / "include"), "-isystem",
           str(torch_include), str(SOURCE), "-o", str(exe)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return exe


@pytest.mark.parametrize("section", SECTIONS)
def test_kernel_items_on_cpu(kernel_items, section):
    done = subprocess.run([str(kernel_items), section], capture_output=True, text=True, timeout=300)
    sys.stdout.write(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    checks = int(summary.split(": ")[1].split()[0])
    assert checks > 0 and summary.endswith(" 0 failures"), summary
