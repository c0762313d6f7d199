"""Checkpoints survive an interrupted writer, and a damaged newest checkpoint is passed over with a
warning naming it (never half-loaded)."""

import subprocess
import sys
import textwrap

import pytest
import torch

from davae_ext.training.common import (CheckpointError, list_checkpoints, load_checkpoint, load_latest_checkpoint,
                                       save_checkpoint)


def state(value: float) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "optimizer": {"lr": 0.1}}


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    """A process writes step 1, then is SIGKILLed in the middle of writing step 2 (its torch.save
    writes half the bytes and kills the process)."""
    code = textwrap.dedent(f"""
        import io, os, signal, torch
        from davae_ext.training.common import save_checkpoint
        save_checkpoint({str(tmp_path)!r}, 1, {{"model": {{"w": torch.ones(4)}}, "optimizer": {{}}}})
        real_save = torch.save
        def half_then_die(obj, f):
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = half_then_die
        save_checkpoint({str(tmp_path)!r}, 2, {{"model": {{"w": torch.zeros(4)}}, "optimizer": {{}}}})
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step_0000001.pt"]
    assert list(tmp_path.glob(".step_0000002.pt.tmp-*")), "the interrupted write left no partial file to test"
    path, loaded = load_latest_checkpoint(tmp_path)
    assert path.name == "step_0000001.pt" and loaded["step"] == 1 and torch.equal(loaded["model"]["w"], torch.ones(4))
    save_checkpoint(tmp_path, 3, state(3.0))  # the next save removes the partial file
    assert not list(tmp_path.glob(".step_*.tmp-*"))


def test_a_truncated_newest_checkpoint_is_passed_over_with_a_warning(tmp_path):
    save_checkpoint(tmp_path, 1, state(1.0))
    newest = save_checkpoint(tmp_path, 2, state(2.0))
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="step_0000002.pt is unreadable"):
        path, loaded = load_latest_checkpoint(tmp_path)
    assert path.name == "step_0000001.pt" and loaded["step"] == 1


def test_no_loadable_checkpoint_is_an_error_naming_each_file(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, state(float(step))).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="step_0000001.pt.*step_0000002.pt|"
                                                                           "step_0000002.pt.*step_0000001.pt"):
        load_latest_checkpoint(tmp_path)


def test_a_checkpoint_without_what_resume_needs_is_rejected(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"model": {}})
    with pytest.raises(CheckpointError, match="incomplete: it has no optimizer"):
        load_checkpoint(path)
