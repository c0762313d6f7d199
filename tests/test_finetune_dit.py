"""train/finetune_dit.py, sample_dit.py and eval_dit.py on the quick tiny DiT and its quick
DA-VAE (D = 3 C, the imagenet recipe)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import log_column, run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "train" / "finetune_dit.py")
FAST = ["--quick-default", "--batch-size", "8", "--crops-per-image", "1", "--no-progress", "--sample-steps", "2",
        "--samples-per-class", "1", "--lr", "1e-3"]


def run(args, check=True, nproc=1):
    return run_script(SCRIPT, args, check, nproc, port=29521)


column = log_column


@pytest.fixture(scope="module")
def dit_run(quick_pipeline, tmp_path_factory):
    """12 plain-path steps with a checkpoint every 4, the pipeline and its sample grid."""
    out = tmp_path_factory.mktemp("ftdit") / "run"
    run([*FAST, "--steps", "12", "--n-warm", "4", "--checkpoint-every", "4", "--output-dir", str(out)])
    return out


def test_outputs_step0_identity_and_falling_loss(dit_run):
    for name in ("log.csv", "loss_curves.png", "samples.png", "summary.json", "pipeline/model_index.json",
                 "pipeline/classes.json", "pipeline/sampling_defaults.json"):
        assert (dit_run / name).exists(), name
    s = json.loads((dit_run / "summary.json").read_text())
    assert s["step0"]["max_abs_diff_base_prediction"] == 0.0  # plain path: the pretrained arithmetic exactly
    assert s["step0"]["max_abs_detail_prediction"] == 0.0
    assert s["recipe"] == "imagenet" and len(s["classes"]) == 6
    weights = column(dit_run, "detail_weight")
    assert weights[0] == 0.0 and weights[-1] == 1.0
    detail = column(dit_run, "detail_mse")
    assert sum(detail[-3:]) / 3 < sum(detail[:3]) / 3  # the zero-initialised detail head learns
    config = json.loads((dit_run / "pipeline" / "vae" / "config.json").read_text())
    assert config["latent_norm"] == "all" and len(config["base_mean"]) == 16 and len(config["detail_mean"]) == 48


def test_resume_equals_an_uninterrupted_run(dit_run, tmp_path):
    out = tmp_path / "resumed"
    args = [*FAST, "--steps", "12", "--n-warm", "4", "--checkpoint-every", "4", "--no-sample", "--output-dir", str(out)]
    p = run([*args, "--stop-at", "6"])
    assert "cache reused" in p.stdout + p.stderr
    run([*args, "--resume"])
    a, b = (json.loads((d / "summary.json").read_text()) for d in (dit_run, out))
    assert a["fingerprint"] == b["fingerprint"]
    assert column(dit_run, "loss") == column(out, "loss")


def test_two_cpu_processes_hold_identical_weights(dit_run, tmp_path):
    out = tmp_path / "ddp"
    run([*FAST, "--steps", "3", "--no-sample", "--fused", "--output-dir", str(out)], nproc=2)
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text())["fingerprint"] for r in (0, 1)]
    assert ranks[0] == ranks[1]


def test_bad_inputs_fail_before_training(dit_run, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(flat / "a.png")
    p = run([*FAST, "--data", str(flat), "--output-dir", str(tmp_path / "o1")], check=False)
    assert p.returncode == 2 and "expected a class-labelled image folder" in p.stderr and "ImageFolder" in p.stderr
    model = tmp_path / "model"
    for sub in ("transformer", "vae"):
        (model / sub).mkdir(parents=True)
    (model / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "DiTTransformer2DModel", "in_channels": 16, "out_channels": 24, "patch_size": 1}))
    (model / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    p = run([*FAST, "--model", str(model), "--output-dir", str(tmp_path / "o2")], check=False)
    assert p.returncode == 2 and "a DiT whose head predicts C = 16 channels" in p.stderr
    assert not (tmp_path / "o1" / "log.csv").exists() and not (tmp_path / "o2" / "log.csv").exists()


class _Features(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.float().mean(dim=(2, 3)), x.float().std(dim=(2, 3))], 1) / 255.0


def test_sample_and_eval_scripts(dit_run, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "train"))
    monkeypatch.chdir(tmp_path)
    import eval_dit
    import sample_dit

    record = sample_dit.main(["--pipeline", str(dit_run / "pipeline"), "--classes", "0,chelsea", "--per-class", "2",
                              "--steps", "2", "--compare-native", "--no-progress", "--output-dir", "s"])
    assert record["classes"] == ["astronaut", "chelsea"] and len(record["files"]) == 4
    assert record["tokens_per_image"] * 4 == record["native"]["tokens_per_image"]  # same output size, 1/4 the tokens
    assert (tmp_path / "s" / "compare.png").exists() and (tmp_path / "s" / "grid.png").exists()
    torch.jit.script(_Features()).save(str(tmp_path / "features.pt"))
    result = eval_dit.main(["--pipeline", str(dit_run / "pipeline"), "--inception", str(tmp_path / "features.pt"),
                            "--per-class", "2", "--steps", "2", "--no-progress", "--output-dir", "e"])
    assert result["images"] == 48 and result["generation"]["images"] == 12
    assert result["generation"]["fid"] > 0 and result["reconstruction"]["rfid"] >= 0
    assert 5 < result["reconstruction"]["psnr_db"] < 60
    with pytest.raises(SystemExit) as e:
        eval_dit.main(["--pipeline", str(dit_run / "pipeline")])
    assert e.value.code == 2
