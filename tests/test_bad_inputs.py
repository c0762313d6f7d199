"""Bad input raises a Python exception naming the argument and the expected and actual values:
through the public ops (fused and reference backends) and through the raw dispatcher ops (the C++
host checks, the fused path's only validation), with the same message on both backends."""

import pytest
import torch

import davae_ext
from davae_ext import ops
from conftest import require_ext

r = torch.randn
x4 = lambda *s, dtype=torch.float32: torch.randn(*s, dtype=dtype)  # noqa: E731
W = lambda n=32, cd=32, p=2: torch.randn(n, cd, p, p)  # noqa: E731

# (id, public call, raw op call or None, exception, fragments that the message must contain)
CASES = [
    ("concat-batch", lambda: ops.latent_concat(x4(2, 4, 6, 6), x4(3, 12, 6, 6)),
     lambda: torch.ops.davae_ext.latent_concat(x4(2, 4, 6, 6), x4(3, 12, 6, 6), False),
     ValueError, ["'detail' must have shape [2, *, 6, 6]", "got [3, 12, 6, 6]"]),
    ("concat-spatial", lambda: ops.latent_concat(x4(2, 4, 6, 6), x4(2, 12, 6, 8)),
     lambda: torch.ops.davae_ext.latent_concat(x4(2, 4, 6, 6), x4(2, 12, 6, 8), False),
     ValueError, ["'detail'", "[2, *, 6, 6]", "got [2, 12, 6, 8]"]),
    ("concat-dtype", lambda: ops.latent_concat(x4(2, 4, 6, 6), x4(2, 12, 6, 6, dtype=torch.float16)),
     lambda: torch.ops.davae_ext.latent_concat(x4(2, 4, 6, 6), x4(2, 12, 6, 6, dtype=torch.float16), False),
     TypeError, ["'detail' must have dtype torch.float32 (same as 'base'), got torch.float16"]),
    ("concat-rank", lambda: ops.latent_concat(x4(4, 6, 6), x4(2, 12, 6, 6)),
     lambda: torch.ops.davae_ext.latent_concat(x4(4, 6, 6), x4(2, 12, 6, 6), False),
     ValueError, ["'base' must be a 4-D tensor", "got shape [4, 6, 6]"]),
    ("concat-int-dtype", lambda: ops.latent_concat(torch.ones(2, 4, 6, 6, dtype=torch.int32), x4(2, 12, 6, 6)),
     lambda: torch.ops.davae_ext.latent_concat(torch.ones(2, 4, 6, 6, dtype=torch.int32), x4(2, 12, 6, 6), False),
     TypeError, ["'base' has unsupported dtype torch.int32; expected one of torch.float32, torch.float16, "
                 "torch.bfloat16 (torch.float64 on CPU only)"]),
    ("concat-order", lambda: ops.latent_concat(x4(2, 4, 6, 6), x4(2, 12, 6, 6), order="reverse"),
     None, ValueError, ["'order' must be one of", "'reverse'"]),
    ("project-groups", lambda: ops.detail_project(x4(2, 10, 6, 6), 4),
     lambda: torch.ops.davae_ext.detail_project(x4(2, 10, 6, 6), 4),
     ValueError, ["D=10", "multiple of the base channel count C=4"]),
    ("project-zero-channels", lambda: ops.detail_project(x4(2, 8, 6, 6), 0),
     lambda: torch.ops.davae_ext.detail_project(x4(2, 8, 6, 6), 0),
     ValueError, ["'base_channels' must be", "0"]),
    ("align-groups", lambda: ops.detail_align_loss(x4(2, 10, 6, 6), x4(2, 4, 6, 6)),
     lambda: torch.ops.davae_ext.detail_align_loss(x4(2, 10, 6, 6), x4(2, 4, 6, 6), 1),
     ValueError, ["D=10", "C=4"]),
    ("align-batch", lambda: ops.detail_align_loss(x4(2, 8, 6, 6), x4(1, 4, 6, 6)),
     lambda: torch.ops.davae_ext.detail_align_loss(x4(2, 8, 6, 6), x4(1, 4, 6, 6), 1),
     ValueError, ["'detail' must have shape [1, *, 6, 6]", "got [2, 8, 6, 6]"]),
    ("align-reduction", lambda: ops.detail_align_loss(x4(2, 8, 6, 6), x4(2, 4, 6, 6), "max"),
     lambda: torch.ops.davae_ext.detail_align_loss(x4(2, 8, 6, 6), x4(2, 4, 6, 6), 7),
     ValueError, ["'reduction' must be"]),
    ("align-grad-shape", None,
     lambda: torch.ops.davae_ext.detail_align_loss_backward(x4(2, 4, 6, 5), x4(2, 8, 6, 6), x4(2, 4, 6, 6), 0),
     ValueError, ["'grad' must have shape [2, 4, 6, 6]", "got [2, 4, 6, 5]"]),
    ("patch-divisible", lambda: ops.detail_patch_embed(x4(1, 16, 6, 5), x4(1, 16, 6, 5), W(), None, None, 2),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 5), x4(1, 16, 6, 5), W(), None, None, 2, False),
     ValueError, ["(6, 5)", "multiples of 'patch_size'=2"]),
    ("patch-weight-shape", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(32, 32, 3), None, None, 2),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(32, 32, 3), None, None, 2, False),
     ValueError, ["'weight' must have shape [32, 32, 2, 2]", "got [32, 32, 3, 3]"]),
    ("patch-weight-channels", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(32, 16), None, None, 2),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(32, 16), None, None, 2, False),
     ValueError, ["'weight' must have shape [32, 32, 2, 2]", "got [32, 16, 2, 2]"]),
    ("patch-weight-rank", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), r(32, 128), None, None, 2),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), r(32, 128), None, None, 2, False),
     ValueError, ["'weight' must be a 4-D Conv2d weight", "got shape [32, 128]"]),
    ("patch-bias-shape", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), r(31), None, 2),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), r(31), None, 2, False),
     ValueError, ["'bias' must have shape [32]", "got [31]"]),
    ("patch-pos-shape", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), None, r(1, 8, 32), 2),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), None, r(1, 8, 32), 2, False),
     ValueError, ["'pos_embed' must have shape [1, 9, 32]", "got [1, 8, 32]"]),
    ("patch-bias-dtype", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), r(32).double(), None, 2),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), r(32).double(), None, 2, False),
     TypeError, ["'bias' must have dtype", "got"]),
    ("patch-weight-dtype", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W().half(), None, None, 2),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W().half(), None, None, 2, False),
     TypeError, ["'weight' must have dtype", "got"]),
    ("patch-size-zero", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), None, None, 0),
     lambda: torch.ops.davae_ext.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), None, None, 0, False),
     ValueError, ["'patch_size' must be", "0"]),
    ("patch-grad-shape", None,
     lambda: torch.ops.davae_ext.detail_patch_embed_backward(x4(1, 8, 32), x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(), 2, False, [True] * 4),
     ValueError, ["'grad' must have shape [1, 9, 32]", "got [1, 8, 32]"]),
    ("latent-weight-channels", lambda: ops.patch_embed(x4(1, 32, 6, 6), W(32, 16), None, None, 2),
     lambda: torch.ops.davae_ext.patch_embed(x4(1, 32, 6, 6), W(32, 16), None, None, 2),
     ValueError, ["patch_embed: 'weight' must have shape [32, 32, 2, 2]", "got [32, 16, 2, 2]"]),
    ("latent-rank", lambda: ops.patch_embed(x4(32, 6, 6), W(), None, None, 2),
     lambda: torch.ops.davae_ext.patch_embed(x4(32, 6, 6), W(), None, None, 2),
     ValueError, ["'latent' must be a 4-D tensor", "got shape [32, 6, 6]"]),
    ("latent-pos-shape", lambda: ops.patch_embed(x4(2, 32, 6, 6), W(), r(32), r(1, 8, 32), 2),
     lambda: torch.ops.davae_ext.patch_embed(x4(2, 32, 6, 6), W(), r(32), r(1, 8, 32), 2),
     ValueError, ["'pos_embed' must have shape [1, 9, 32]", "got [1, 8, 32]"]),
    ("latent-bias-dtype", lambda: ops.patch_embed(x4(1, 32, 6, 6), W(), r(32).half(), None, 2),
     lambda: torch.ops.davae_ext.patch_embed(x4(1, 32, 6, 6), W(), r(32).half(), None, 2),
     TypeError, ["'bias' must have dtype torch.float32 (same as 'latent'), got torch.float16"]),
    ("latent-divisible", lambda: ops.patch_embed(x4(1, 32, 5, 6), W(), None, None, 2),
     lambda: torch.ops.davae_ext.patch_embed(x4(1, 32, 5, 6), W(), None, None, 2),
     ValueError, ["(5, 6)", "multiples of 'patch_size'=2"]),
    ("latent-grad-shape", None,
     lambda: torch.ops.davae_ext.patch_embed_backward(x4(1, 8, 32), x4(1, 32, 6, 6), W(), 2, [True] * 4),
     ValueError, ["patch_embed_backward: 'grad' must have shape [1, 9, 32]", "got [1, 8, 32]"]),
    # A bool is an int to the dispatcher; the public ops reject it (on both backends).
    ("patch-size-bool", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W(p=1), None, None, True),
     None, ValueError, ["'patch_size' must be a positive int", "got True"]),
    ("project-channels-bool", lambda: ops.detail_project(x4(2, 4, 6, 6), True),
     None, ValueError, ["'base_channels' must be a positive int", "got True"]),
    ("patch-device", lambda: ops.detail_patch_embed(x4(1, 16, 6, 6), x4(1, 16, 6, 6), W().to("meta"), None, None, 2),
     None, ValueError, ["'weight' must be on device cpu", "got meta"]),
]


def _check(call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("case", [c for c in CASES if c[1] is not None], ids=lambda c: c[0])
def test_public_ops(case, backend):
    _, public, _, exc, fragments = case
    with davae_ext.use_backend(backend):
        _check(public, exc, fragments)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] is not None], ids=lambda c: c[0])
def test_same_message_on_both_backends(case):
    """The C++ host checks (fused) and the Python checks (reference, fake kernels) word every error
    alike: one wording, whichever layer catches it."""
    require_ext()
    _, public, _, exc, _ = case
    messages = []
    for backend in ("fused", "reference"):
        with davae_ext.use_backend(backend), pytest.raises(exc) as info:
            public()
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("case", [c for c in CASES if c[2] is not None], ids=lambda c: c[0])
def test_raw_ops_host_checks(case):
    require_ext()
    _, _, raw, exc, fragments = case
    _check(raw, exc, fragments)


def test_reference_functions_validate_too():
    with pytest.raises(ValueError, match="'detail' must have shape"):
        davae_ext.reference.latent_concat(x4(2, 4, 6, 6), x4(3, 4, 6, 6))
