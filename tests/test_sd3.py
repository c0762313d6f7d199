"""The zero-init warm start of a (tiny, built-from-config) diffusers SD3 transformer."""

import copy
import math

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import SD3Transformer2DModel  # noqa: E402

from davae_ext.models.sd3 import DAVAESD3Transformer2DModel, expand_transformer  # noqa: E402
from conftest import DEVICES, ORDERS  # noqa: E402

TINY = dict(
    sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=2,
    caption_projection_dim=16, joint_attention_dim=32, pooled_projection_dim=32, out_channels=16,
    pos_embed_max_size=24, dual_attention_layers=(0,), qk_norm="rms_norm",
)


@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(0)
    return SD3Transformer2DModel(**TINY).eval()


def _inputs(seed=1, H=16, W=12, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    tensors = (torch.randn(2, 16, H, W, generator=g), torch.randn(2, 16, H, W, generator=g),
               torch.randn(2, 7, 32, generator=g), torch.randn(2, 32, generator=g), torch.tensor([10.0, 700.0]))
    return tuple(t.to(device) for t in tensors)


def _on(model, device):
    """The module-scoped model itself on the CPU, a copy of it elsewhere."""
    return model if device == "cpu" else copy.deepcopy(model).to(device)


def _split(out, order, C=16):
    D = out.shape[1] - C
    return (out[:, D:], out[:, :D]) if order == "detail_first" else (out[:, :C], out[:, C:])


def _run(model, base, detail, text, pooled, t, order):
    latent = torch.cat((detail, base) if order == "detail_first" else (base, detail), 1)
    return model(latent, text, pooled, t).sample


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fused", [False, True])
def test_zero_init_is_the_pretrained_model(pretrained, order, fused, device, no_tf32):
    base, detail, text, pooled, t = _inputs(device=device)
    pretrained = _on(pretrained, device)
    with torch.no_grad():
        expected = pretrained(base, text, pooled, t).sample
        model = expand_transformer(pretrained, 16, init="zero", order=order, fused=fused).eval()
        out_base, out_detail = _split(_run(model, base, detail, text, pooled, t, order), order)
    assert model.config.in_channels == 32 and model.config.out_channels == 32
    assert out_base.device == expected.device and next(model.parameters()).device == expected.device
    assert torch.equal(out_detail, torch.zeros_like(out_detail))
    if fused or device != "cpu":  # one GEMM for the fused embed; CUDA's kernels may pick other orders
        torch.testing.assert_close(out_base, expected, rtol=1e-4, atol=1e-5)
    else:
        assert torch.equal(out_base, expected)


def test_random_init_differs(pretrained):
    base, detail, text, pooled, t = _inputs()
    with torch.no_grad():
        expected = pretrained(base, text, pooled, t).sample
        model = expand_transformer(pretrained, 16, init="random").eval()
        out_base, out_detail = _split(_run(model, base, detail, text, pooled, t, "base_first"), "base_first")
    assert not torch.allclose(out_base, expected) and out_detail.abs().max() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_fused_and_plain_agree_on_outputs_and_every_gradient(pretrained, device, no_tf32):
    base, detail, text, pooled, t = _inputs(device=device)
    pretrained = _on(pretrained, device)
    results = {}
    for fused in (True, False):
        torch.manual_seed(3)
        model = expand_transformer(pretrained, 16, init="random", fused=fused).train()
        out = _run(model, base, detail, text, pooled, t, "base_first")
        out.square().mean().backward()
        results[fused] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-4, atol=1e-5)
    assert results[True][1].keys() == results[False][1].keys()
    for name, g in results[True][1].items():
        torch.testing.assert_close(g, results[False][1][name], rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_training_step(pretrained, device, no_tf32):
    """What finetune_sd35.py --mixed-precision bf16 --fused does: float32 weights under bf16
    autocast. Against the same step in float32 without autocast, the fused model's output and the
    widened patch embed's weight and bias gradients are within 1.5x the error of the plain (Conv2d)
    model under the same autocast (a 2% error in the fused embed's weight fails this); then AdamW
    steps of the fused model lower the loss."""
    base, detail, text, pooled, t = _inputs(device=device)
    target = torch.randn(2, 32, *base.shape[-2:], generator=torch.Generator().manual_seed(5)).to(device)
    pretrained = _on(pretrained, device)

    def model_and_loss(fused, autocast):
        torch.manual_seed(3)
        model = expand_transformer(pretrained, 16, init="random", fused=fused).train()
        with torch.autocast(device, torch.bfloat16, enabled=autocast):
            out = _run(model, base, detail, text, pooled, t, "base_first")
        return model, out.float(), (out.float() - target).square().mean()

    results = {}
    for fused, autocast in ((True, True), (False, True), (False, False)):
        model, out, loss = model_and_loss(fused, autocast)
        loss.backward()
        proj = model.pos_embed.proj
        assert proj.weight.grad.dtype == torch.float32
        results[fused, autocast] = out.detach(), proj.weight.grad, proj.bias.grad
    exact = results[False, False]
    for what, fused, plain, ref in zip(("output", "d_weight", "d_bias"), results[True, True], results[False, True], exact):
        err_fused, err_plain = (fused - ref).norm() / ref.norm(), (plain - ref).norm() / ref.norm()
        assert err_fused <= 1.5 * err_plain, f"{what}: fused error {err_fused:.2e}, plain {err_plain:.2e}"

    model, _, _ = model_and_loss(True, True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        with torch.autocast(device, torch.bfloat16):
            out = _run(model, base, detail, text, pooled, t, "base_first")
        loss = (out.float() - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0], losses


def test_save_load_roundtrip_and_state_dict_keys(pretrained, tmp_path):
    base, detail, text, pooled, t = _inputs()
    model = expand_transformer(pretrained, 16, init="random", order="detail_first").eval()
    model.save_pretrained(tmp_path)
    for cls in (DAVAESD3Transformer2DModel, type(model)):
        loaded = cls.from_pretrained(tmp_path).eval()
        assert loaded.config.detail_channels == 16 and loaded.config.channel_order == "detail_first"
        with torch.no_grad():
            assert torch.equal(_run(loaded, base, detail, text, pooled, t, "detail_first"),
                               _run(model, base, detail, text, pooled, t, "detail_first"))
    assert set(model.state_dict()) == set(pretrained.state_dict())
    for key, value in pretrained.state_dict().items():
        if not key.startswith(("pos_embed.proj", "proj_out")):
            assert torch.equal(model.state_dict()[key], value), key


def test_weights_are_copies_unless_shared(pretrained):
    model = expand_transformer(pretrained, 16)
    shared = expand_transformer(pretrained, 16, share_weights=True)
    key = "transformer_blocks.0.attn.to_q.weight"
    src = pretrained.state_dict()[key]
    assert model.state_dict()[key].data_ptr() != src.data_ptr()
    assert shared.state_dict()[key].data_ptr() == src.data_ptr()


def test_compiles_fullgraph(pretrained):
    torch._dynamo.reset()
    base, detail, text, pooled, t = _inputs()
    model = expand_transformer(pretrained, 16, init="random").eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    latent = torch.cat([base, detail], 1)
    with torch.no_grad():
        torch.testing.assert_close(compiled(latent, text, pooled, t).sample, model(latent, text, pooled, t).sample)


def test_bad_inputs(pretrained):
    with pytest.raises(ValueError, match="'detail_channels' must be a positive int"):
        expand_transformer(pretrained, 0)
    with pytest.raises(TypeError, match="SD3Transformer2DModel"):
        expand_transformer(torch.nn.Linear(2, 2), 16)
    model = expand_transformer(pretrained, 16)
    with pytest.raises(ValueError, match="already"):
        expand_transformer(model, 16)
    base, detail, text, pooled, t = _inputs()
    with pytest.raises(ValueError, match=r"\[B, 32, H, W\]"):
        model(base, text, pooled, t)  # 16 channels instead of C + D = 32
