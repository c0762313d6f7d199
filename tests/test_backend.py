"""Extension loading, backend selection, fallback and build info."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import davae_ext
from davae_ext import ops, reference
from conftest import require_ext


def test_build_info_keys():
    info = davae_ext.build_info()
    for key in ("extension_loaded", "cpu_kernels", "cpu_openmp", "cuda_kernels", "cuda_archs", "torch_built_against",
                "torch_running"):
        assert key in info
    assert info["torch_running"] == torch.__version__


def test_extension_really_loaded_when_required():
    """CI sets DAVAE_REQUIRE_EXT=1: a silent fallback to the reference must fail the run."""
    if os.environ.get("DAVAE_REQUIRE_EXT") != "1":
        pytest.skip("DAVAE_REQUIRE_EXT is not set")
    info = davae_ext.build_info()
    assert info["extension_loaded"], info["load_error"]
    assert info["torch_built_against"] == torch.__version__
    assert torch._C._dispatch_has_kernel_for_dispatch_key("davae_ext::detail_patch_embed", "CPU")


def test_cpu_kernels_are_parallel_with_torchs_openmp():
    """ATen's parallel_for compiles into the extension: without -fopenmp the CPU kernels ran on
    one thread (the align loss took as long with 2 threads as with 1, 1.6x eager). With torch's
    OpenMP backend the extension must call into an OpenMP runtime (GOMP_parallel, undefined here),
    and that runtime must be the one torch loaded."""
    require_ext()
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's parallel backend is not OpenMP")
    import shutil

    from davae_ext import _C

    assert davae_ext.build_info()["cpu_openmp"]
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not installed")
    undefined = subprocess.run([nm, "--undefined-only", "-D", _C.__file__], capture_output=True, text=True,
                               check=True).stdout
    assert "GOMP_parallel" in undefined, f"{_C.__file__} has no OpenMP parallel region"
    # In a fresh interpreter: this one may have imported scikit-learn, which brings its own libgomp.
    probe = ("import torch, davae_ext; from davae_ext import _C\n"
             "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l.split()[-1]})))")
    gomp = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert len(gomp) == 1, f"more than one OpenMP runtime loaded with the extension: {gomp}"


def test_extension_does_not_carry_its_own_libstdcxx():
    """A static copy of libstdc++ inside the extension (a compiler with only libstdc++.a, or
    -static-libstdc++) crashed the process when a host check formatted its error message; the
    build links torch's shared libstdc++ instead. std::locale's members must not be defined here."""
    require_ext()
    import shutil

    from davae_ext import _C

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not installed")
    defined = subprocess.run([nm, "--defined-only", "-D", _C.__file__], capture_output=True, text=True, check=True).stdout
    symtab = subprocess.run([nm, "--defined-only", _C.__file__], capture_output=True, text=True).stdout
    own = [line for line in (defined + symtab).splitlines() if "_ZNSt6locale" in line]
    assert not own, f"{_C.__file__} defines libstdc++'s std::locale: {own[:3]}"


def test_use_backend_restores_and_validates():
    assert davae_ext.get_backend() == "fused"
    with davae_ext.use_backend("reference"):
        assert davae_ext.get_backend() == "reference"
    assert davae_ext.get_backend() == "fused"
    with pytest.raises(ValueError, match="backend must be one of"):
        with davae_ext.use_backend("triton"):
            pass


def test_reference_backend_never_calls_the_extension(monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "latent_concat", lambda *a, **k: calls.append(1) or torch.zeros(1))
    with davae_ext.use_backend("reference"):
        ops.latent_concat(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2))
    assert calls == [1]


def test_device_without_kernels_falls_back_with_one_warning():
    """A device this build has no kernels for runs the reference (meta tensors stand in for CUDA
    tensors on a build without CUDA kernels)."""
    from davae_ext import _backend

    _backend._warned_cuda_fallback = False
    base, detail = torch.randn(1, 4, 4, 4, device="meta"), torch.randn(1, 4, 4, 4, device="meta")
    with pytest.warns(RuntimeWarning, match="no compiled kernels for meta tensors"):
        out = ops.latent_concat(base, detail)
    assert out.shape == (1, 8, 4, 4) and out.device.type == "meta"


def test_mismatched_torch_version_warns_and_falls_back():
    """An extension built against another torch is not loaded: import works, warns once with both
    versions and the fix, and the ops give the reference results."""
    code = textwrap.dedent(
        """
        import warnings, torch
        real = torch.__version__
        torch.__version__ = "0.0.0-other"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import davae_ext
        messages = [str(w.message) for w in caught if "davae_ext" in str(w.message)]
        assert len(messages) == 1, messages
        assert "0.0.0-other" in messages[0] and "--no-build-isolation" in messages[0], messages[0]
        info = davae_ext.build_info()
        assert info["extension_loaded"] is False, info
        b, d = torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3)
        assert torch.equal(davae_ext.ops.latent_concat(b, d), torch.cat([b, d], 1))
        print("OK")
        """
    )
    if not davae_ext.build_info()["extension_loaded"]:
        pytest.skip("no extension built: nothing to mismatch")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_env_backend_default():
    code = "import davae_ext; print(davae_ext.get_backend())"
    env = dict(os.environ, DAVAE_BACKEND="reference")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.stdout.strip().endswith("reference"), result.stderr[-2000:]
