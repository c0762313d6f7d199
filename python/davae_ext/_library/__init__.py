"""Fake (meta) kernels of the compiled ops, one module per op, mirroring ``csrc/cpu/<op>.cpp``:
the shapes torch.compile and torch.export trace with. The autograd of every op is C++
(``csrc/autograd/<op>.cpp``). Imported only when the extension (and so the op schemas) is loaded."""

from . import detail_align_loss, detail_project, latent_concat, patch_embed  # noqa: F401
