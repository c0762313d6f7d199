"""train/train_vae.py on the quick tiny pipeline: a short run and its outputs, resume equals an
uninterrupted run, two CPU processes end with the same weights, and bad input fails first."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
SCRIPT = str(Path(__file__).resolve().parents[1] / "train" / "train_vae.py")
SMALL = ["--batch-size", "2", "--no-progress", "--eval-images", "2"]
FAST = ["--resolution", "32", *SMALL]


def run(args, check=True, nproc=1, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "29517", SCRIPT]
    else:
        cmd = [sys.executable, SCRIPT]
    p = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"train_vae.py failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_short_run_writes_everything(quick_pipeline, tmp_path):
    out = tmp_path / "run"
    run(["--base-vae", str(quick_pipeline), "--output-dir", str(out), "--steps", "3", "--checkpoint-every", "2", *FAST])
    for name in ("log.csv", "loss_curves.png", "reconstructions.png", "eval.json", "summary.json", "args.json"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002.pt", "step_0000003.pt"]
    assert len((out / "log.csv").read_text().splitlines()) == 1 + 3
    result = json.loads((out / "eval.json").read_text())
    assert {"davae", "base_half_upsampled", "base_full", "alignment"} <= set(result)
    from davae_ext.models.davae import DAVAE

    model = DAVAE.from_pretrained(out / "davae")
    assert model.config.detail_mean is not None and len(model.config.detail_std) == 16
    # eval_vae.py on the saved model
    ev = subprocess.run([sys.executable, str(Path(SCRIPT).with_name("eval_vae.py")), "--davae", str(out / "davae"),
                         "--resolution", "32", "--limit", "2", "--output-dir", str(tmp_path / "eval")],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    table = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert table["base_full"]["latent_cells"] == 4 * table["davae"]["latent_cells"]
    assert "alignment:" in ev.stdout and (tmp_path / "eval" / "reconstructions.png").exists()


def test_resume_matches_uninterrupted(quick_pipeline, tmp_path):
    base = ["--base-vae", str(quick_pipeline), "--checkpoint-every", "3", "--no-eval", "--fused", *FAST]
    run([*base, "--output-dir", str(tmp_path / "straight"), "--steps", "5"])
    run([*base, "--output-dir", str(tmp_path / "resumed"), "--steps", "5", "--stop-at", "3"])
    p = run([*base, "--output-dir", str(tmp_path / "resumed"), "--steps", "5", "--resume"])
    assert "resumed from" in p.stdout + p.stderr
    assert summary(tmp_path / "resumed")["fingerprint"] == summary(tmp_path / "straight")["fingerprint"]
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1", "2", "3", "4"]


def test_resume_passes_over_a_truncated_checkpoint(quick_pipeline, tmp_path):
    """The newest checkpoint cut in half: --resume warns naming it and continues from the one
    before; with every checkpoint damaged it fails naming them."""
    out = tmp_path / "run"
    base = ["--base-vae", str(quick_pipeline), "--checkpoint-every", "1", "--no-eval", "--output-dir", str(out), *FAST]
    run([*base, "--steps", "3"])
    newest = out / "checkpoints" / "step_0000003.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    p = run([*base, "--steps", "4", "--resume"])
    assert "step_0000003.pt is unreadable" in p.stderr
    assert "at step 2" in p.stdout + p.stderr
    log = (out / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1", "2", "3"]
    for checkpoint in (out / "checkpoints").glob("step_*.pt"):
        checkpoint.write_bytes(b"damaged")
    p = run([*base, "--steps", "5", "--resume"], check=False)
    assert p.returncode != 0 and "can be loaded" in p.stderr and "step_0000004.pt" in p.stderr


def test_bf16_and_gradient_checkpointing(quick_pipeline, tmp_path):
    out = tmp_path / "bf16"
    run(["--base-vae", str(quick_pipeline), "--output-dir", str(out), "--steps", "2", "--no-eval", "--mixed-precision", "bf16",
         "--gradient-checkpointing", *FAST])
    losses = (out / "log.csv").read_text().splitlines()[1:]
    assert len(losses) == 2 and all("nan" not in line for line in losses)


def test_two_cpu_processes_hold_identical_weights(quick_pipeline, tmp_path):
    out = tmp_path / "ddp"
    run(["--base-vae", str(quick_pipeline), "--output-dir", str(out), "--steps", "3", "--no-eval", *FAST], nproc=2)
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
    assert summary(out)["processes"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--base-channels", "4"], "--base-channels 4: the base VAE has 16 latent channels"),
    (["--lpips-weights", "/nonexistent/lpips.pth"], "--lpips-weights '/nonexistent/lpips.pth': expected an existing file"),
    (["--resolution", "40"], "--resolution 40: expected a multiple of 16"),
])
def test_bad_input_fails_before_training(quick_pipeline, tmp_path, extra, message):
    size = [] if "--resolution" in extra else ["--resolution", "32"]
    p = run(["--base-vae", str(quick_pipeline), "--output-dir", str(tmp_path / "bad"), "--steps", "2", *SMALL, *size, *extra],
            check=False)
    assert p.returncode == 2
    assert message in p.stderr
    assert not (tmp_path / "bad").exists()
