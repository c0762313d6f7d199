"""Fake (meta) kernels and autograd formulas of the compiled ops, one module per op, mirroring
``csrc/cpu/<op>.cpp``. Imported only when the extension (and so the op schemas) is loaded."""

from . import detail_align_loss, detail_project, latent_concat, patch_embed  # noqa: F401
