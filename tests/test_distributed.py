"""The gradient monitor under torch.distributed: two processes (torchrun, gloo, CPU) give the
norms one process gives on the same global batch, under DDP and FSDP2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llm_widgets as lw

SCRIPT = Path(__file__).with_name("ranks_monitor.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*run, str(SCRIPT), "ranks", str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run([sys.executable, str(SCRIPT), "single", str(out)], env=env, check=True, timeout=180)
    load = lambda name: json.loads((out / f"{name}.json").read_text())  # noqa: E731
    return load("rank0"), load("rank1"), load("single")["norms"]


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_norms_are_the_full_gradients_on_every_rank(ranks, kind):
    rank0, rank1, single = ranks
    for step in (0, 1):  # (step 3 follows the steering of step 2)
        for group, norm in single[step].items():
            assert rank0[kind][step][group] == pytest.approx(norm, rel=1e-5), (kind, step, group)
            assert rank1[kind][step][group] == rank0[kind][step][group]


def test_steering_from_rank_0_is_applied_on_every_rank(ranks):
    rank0, rank1, _ = ranks
    for kind in ("ddp", "fsdp"):
        assert rank0[f"{kind}_steered"] == rank1[f"{kind}_steered"]
        assert rank0[f"{kind}_steered"][0] == pytest.approx(0.25 * rank0[kind][1]["layer 0"], rel=1e-6)
    assert rank0["ddp_checksum"] == rank1["ddp_checksum"]  # the same weights after the steered step


def test_per_rank_times_and_one_voice(ranks):
    rank0, rank1, _ = ranks
    assert len(rank0["ranks"]["forward_seconds"]) == 2 and all(t > 0 for t in rank0["ranks"]["forward_seconds"])
    assert rank0["ranks"] == rank1["ranks"]
    assert rank0["ranks_frame"] == [6, 5]  # 3 steps x 2 ranks: step, rank, seconds, forward_seconds, loss
    assert rank0["warn"] is False and rank1["warn"] is False  # (warn=False asked; rank 1 never warns anyway)


def test_a_nan_on_rank_1_is_its_incident(ranks):
    for seen in ranks[:2]:
        assert seen["stopped"].startswith("step 2: nonfinite")
        assert seen["incident"] == {"step": 2, "rank": 1, "has_63": True}  # rank 1's batch, on both ranks
        assert seen["replay_module"] == "model.embed_tokens"


def test_a_monitor_on_some_ranks_only_is_refused(ranks):
    assert "not on rank(s) [1]" in ranks[0]["partial"]


def test_distributed_without_a_process_group_is_refused(tiny_gpt2):
    with pytest.raises(lw.InputError, match="not initialised"):
        lw.GradientMonitor(tiny_gpt2.model, distributed=True)
    with pytest.raises(lw.WrongTypeError, match="'auto', True or False"):
        lw.GradientMonitor(tiny_gpt2.model, distributed="yes")


def test_the_trainer_callback_reads_the_norm_the_trainer_logs(ranks):
    rank0, rank1, _ = ranks
    assert len(rank0["trainer"]["norms"]) == 3 and rank0["trainer"]["norms"] == rank1["trainer"]["norms"]
    assert rank0["trainer"]["norms"] == pytest.approx(rank0["trainer"]["logged"], rel=1e-5)
