"""Per-call host overhead of the ops: tiny tensors, so the time is the Python and dispatcher path
(validation, autograd bookkeeping, op dispatch), not the kernel.

At the real model sizes these ops are small: on an H100 a fused kernel runs for 3-60 us, and a
backward through the autograd engine is bounded by the host unless the GPU is busy elsewhere.
This benchmark shows what each provider costs the host per call, in three modes:

- ``fwd``: forward under ``no_grad``;
- ``fwd_grad``: forward with inputs that require grad (the autograd node is recorded);
- ``fwdbwd``: forward + ``torch.autograd.grad`` to every input.

Providers: ``fused`` (``davae_ext.ops``), ``fused_raw`` (the ``torch.ops.davae_ext`` overload
directly: the floor the Python wrapper adds to) and ``eager`` (``davae_ext.reference``).
"""

import pytest
import torch

import davae_ext
from davae_ext import ops, reference

MODES = ["fwd", "fwd_grad", "fwdbwd"]
PROVIDERS = ["fused", "fused_raw", "eager"]


def _cases():
    raw = torch.ops.davae_ext if davae_ext.build_info()["extension_loaded"] else None
    # name: (tensors(make) -> list, fused, raw, eager); tiny shapes (B=1, C=D=2, 4x4 latent).
    return {
        "latent_concat": (
            lambda t: [t(1, 2, 4, 4), t(1, 2, 4, 4)],
            lambda b, d: ops.latent_concat(b, d),
            lambda b, d: raw.latent_concat.default(b, d, False),
            lambda b, d: reference.latent_concat(b, d),
        ),
        "detail_align_loss": (
            lambda t: [t(1, 2, 4, 4), t(1, 2, 4, 4)],
            lambda d, b: ops.detail_align_loss(d, b),
            lambda d, b: raw.detail_align_loss.default(d, b, 1),
            lambda d, b: reference.detail_align_loss(d, b),
        ),
        "detail_patch_embed": (
            lambda t: [t(1, 2, 4, 4), t(1, 2, 4, 4), t(8, 4, 2, 2), t(8), t(1, 4, 8)],
            lambda b, d, w, bias, pos: ops.detail_patch_embed(b, d, w, bias, pos, 2),
            lambda b, d, w, bias, pos: raw.detail_patch_embed.default(b, d, w, bias, pos, 2, False),
            lambda b, d, w, bias, pos: reference.detail_patch_embed(b, d, w, bias, pos, 2),
        ),
    }


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["latent_concat", "detail_align_loss", "detail_patch_embed"])
@pytest.mark.parametrize("device", _devices())
def bench_overhead(benchmark, device, op, mode, provider):
    if provider != "eager" and not davae_ext.build_info()["extension_loaded"]:
        pytest.skip("the compiled extension is not loaded")
    if davae_ext.get_backend() != "fused":
        pytest.skip("DAVAE_BACKEND selects the reference: the fused providers would not be fused")
    benchmark.group = f"overhead-{op}-{mode}-{device}"
    make, fused, raw, eager = _cases()[op]
    fn = {"fused": fused, "fused_raw": raw, "eager": eager}[provider]
    g = torch.Generator().manual_seed(0)
    tensors = make(lambda *shape: torch.randn(*shape, generator=g).to(device).requires_grad_(mode != "fwd"))

    if mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(*tensors)
    elif mode == "fwd_grad":
        def call():
            return fn(*tensors)
    else:
        def call():
            out = fn(*tensors)
            return torch.autograd.grad(out.sum() if out.dim() else out, tensors)

    def synced():
        call()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(op=op, mode=mode, provider=provider, device=device)
    benchmark.pedantic(synced, rounds=200, iterations=10, warmup_rounds=20)
    benchmark.extra_info["median_ms"] = benchmark.stats.stats.median * 1e3
