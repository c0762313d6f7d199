"""Shared test helpers: devices, dtypes, input makers and the comparison rule.

Comparison rule (FlashAttention's): every result is compared with the float64 reference on the
same inputs. float64/float32 results must match it to a tight tolerance; for 16-bit dtypes the
kernel's max error must be at most 2x the max error of the same-dtype reference (plus one unit of
rounding noise), which adapts to the problem size instead of relying on magic numbers.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

import davae_ext

# Under pytest-xdist (the README's test command runs two workers), each worker gets its share of
# the cores: two workers with a full OpenMP pool each would thrash the same two cores. The
# subprocess-based tests set OMP_NUM_THREADS=1 for their children already.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

CUDA = torch.cuda.is_available() and davae_ext.build_info()["cuda_kernels"]
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
CPU_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICE_DTYPES = [("cpu", dt) for dt in CPU_DTYPES] + [("cuda", dt) for dt in (CUDA_DTYPES if CUDA else [])]
ORDERS = ["base_first", "detail_first"]

TIGHT = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5)}


def device_dtype_id(param):
    device, dtype = param
    return f"{device}-{str(dtype).replace('torch.', '')}"


# Layouts of a latent the ops read in place (their H x W planes are contiguous), and one they copy.
IN_PLACE_LAYOUTS = ["contiguous", "strided", "batch_strided"]
LAYOUTS = IN_PLACE_LAYOUTS + ["channels_last"]


def make(shape, dtype, device, layout="contiguous", seed=None, requires_grad=False):
    """Random tensor of `shape`; 4-D layouts: "strided" slices every other channel of a wider
    tensor, "batch_strided" every other batch entry of a longer one (both views whose planes are
    contiguous), "channels_last" permutes the memory order."""
    g = torch.Generator().manual_seed(seed if seed is not None else hash(tuple(shape)) % 2**31)
    if layout == "strided" and len(shape) == 4:
        wide = torch.randn(shape[0], 2 * shape[1], *shape[2:], generator=g, dtype=torch.float64)
        t = wide.to(device=device, dtype=dtype)[:, 1::2]
    elif layout == "batch_strided" and len(shape) == 4:
        long = torch.randn(2 * shape[0], *shape[1:], generator=g, dtype=torch.float64)
        t = long.to(device=device, dtype=dtype)[1::2]
    else:
        t = torch.randn(tuple(shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        if layout == "channels_last" and len(shape) == 4:
            t = t.contiguous(memory_format=torch.channels_last)
    if layout in ("strided", "channels_last") and t.numel() > 1 and len(shape) == 4:
        assert not t.is_contiguous() or layout == "channels_last"
    return t.requires_grad_(requires_grad)


PAIR_LAYOUTS = LAYOUTS + ["slices"]


def latent_pair(B, C, D, H, W, dtype, device, layout, order="base_first", seed=0, requires_grad=False):
    """(base [B, C, H, W], detail [B, D, H, W]) in `layout`: one of LAYOUTS for each, or "slices",
    the two channel ranges of one [B, C + D, H, W] latent in `order` (latent[:, :C] and
    latent[:, C:], what DetailPatchEmbed's callers hold). Leaves when requires_grad."""
    if layout != "slices":
        return (make((B, C, H, W), dtype, device, layout, seed=seed, requires_grad=requires_grad),
                make((B, D, H, W), dtype, device, layout, seed=seed + 1, requires_grad=requires_grad))
    latent = make((B, C + D, H, W), dtype, device, seed=seed)
    first = D if order == "detail_first" else C
    parts = latent[:, :first], latent[:, first:]
    base, detail = parts[::-1] if order == "detail_first" else parts
    return base.detach().requires_grad_(requires_grad), detail.detach().requires_grad_(requires_grad)


def to64(t):
    return None if t is None else t.detach().to(device="cpu", dtype=torch.float64)


def assert_close_to_reference(out, ref_same_dtype, ref64, dtype, what="output"):
    """Check `out` (a kernel's result) against the float64 reference (see module docstring)."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    o = to64(out)
    if ref64.numel() == 0:
        return
    rs = to64(ref_same_dtype)
    if not torch.isfinite(rs).all():  # e.g. a float16 sum past 65504: must overflow alike
        assert torch.equal(torch.isfinite(o), torch.isfinite(rs)), f"{what}: non-finite pattern differs"
        return
    assert torch.isfinite(o).all(), f"{what}: non-finite values"
    if dtype in TIGHT:
        rtol, atol = TIGHT[dtype]
        scale = max(1.0, ref64.abs().max().item())
        torch.testing.assert_close(o, ref64, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")
        return
    err = (o - ref64).abs().max().item()
    ref_err = (rs - ref64).abs().max().item()
    noise = torch.finfo(dtype).eps * ref64.abs().max().item()
    assert err <= 2 * ref_err + noise, (
        f"{what}: {dtype} kernel error {err:.3e} exceeds 2x the same-dtype reference error "
        f"{ref_err:.3e} + noise {noise:.3e}"
    )


def run_both(fn_fused, fn_ref, inputs, grad_seed=0):
    """Run the fused op, the same-dtype reference and the float64 reference on `inputs` (a list of
    tensors or other args). Returns dict with outputs and, for tensors requiring grad, grads
    under one shared random output gradient."""
    results = {}
    for name, fn, cast in (
        # The fused op gets the inputs as they are (a clone of a non-dense view would be contiguous).
        ("fused", fn_fused, lambda t: t.detach().requires_grad_(t.requires_grad)),
        ("ref", fn_ref, lambda t: t.detach().clone().requires_grad_(t.requires_grad)),
        ("ref64", fn_ref, lambda t: to64(t).requires_grad_(t.requires_grad)),
    ):
        args = [cast(a) if isinstance(a, torch.Tensor) else a for a in inputs]
        if name == "fused":
            with davae_ext.use_backend("fused"):
                out = fn(*args)
        else:
            with davae_ext.use_backend("reference"):
                out = fn(*args)
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = []
        if leaves:
            g = torch.Generator().manual_seed(grad_seed)
            go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
            grads = torch.autograd.grad(out, leaves, go, allow_unused=False)
        results[name] = (out, grads)
    return results


def check_against_reference(fn_fused, fn_ref, inputs, dtype):
    r = run_both(fn_fused, fn_ref, inputs)
    (out, grads), (ref, ref_grads), (ref64, ref64_grads) = r["fused"], r["ref"], r["ref64"]
    assert_close_to_reference(out, ref, ref64, dtype, "output")
    for i, (g, gr, g64) in enumerate(zip(grads, ref_grads, ref64_grads)):
        assert_close_to_reference(g, gr, g64, dtype, f"grad #{i}")


@pytest.fixture(autouse=True)
def _fused_backend():
    with davae_ext.use_backend("fused"):
        yield


def require_ext():
    if not davae_ext.build_info()["extension_loaded"]:
        if os.environ.get("DAVAE_REQUIRE_EXT") == "1":
            pytest.fail("DAVAE_REQUIRE_EXT=1 but the compiled extension is not loaded")
        pytest.skip("compiled extension not loaded")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A fresh cache folder for the session (DAVAE_CACHE) and an offline Hugging Face hub."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("davae_cache")
    mp.setenv("DAVAE_CACHE", str(path))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def quick_pipeline(tiny_cache):
    """The embedded tiny SD3.5 pipeline, quick recipe (built once per session, ~30 s)."""
    for module in ("diffusers", "transformers", "skimage"):
        pytest.importorskip(module)
    from davae_ext.training import tiny

    return tiny.build_tiny_sd35(quick=True, progress=False)


@pytest.fixture
def no_tf32():
    """float32 CUDA matmuls and convolutions without TF32 (cuDNN's convolutions use it by default),
    so a float32 comparison on CUDA means what it means on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def require_cuda_memory(gib: int):
    """Skip unless the CUDA kernels are built and the GPU has `gib` GiB free (the 64-bit index paths)."""
    if not CUDA:
        pytest.skip("needs a GPU and the CUDA kernels")
    free, _ = torch.cuda.mem_get_info()
    if free < gib << 30:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free / 2**30:.1f} GiB free")


def run_script(script: str, args, check: bool = True, nproc: int = 1, port: int = 29519, timeout: float = 900):
    """A script in a child process with one OpenMP thread; with ``nproc`` > 1 under
    ``torch.distributed.run`` on ``port`` (one port per test file: xdist runs files side by side)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
              str(port)] if nproc > 1 else [sys.executable]
    p = subprocess.run(prefix + [str(script), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        name = os.path.basename(str(script))
        raise AssertionError(f"{name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def log_column(folder, name: str = "loss") -> list[float]:
    """One column of a training run's log.csv."""
    with open(os.path.join(folder, "log.csv")) as f:
        return [float(r[name]) for r in csv.DictReader(f)]
