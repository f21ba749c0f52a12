"""The training flight recorder: incidents keep the step that went wrong, and replay it exactly."""

from __future__ import annotations

import copy
import gc
import warnings

import pytest
import torch

import llm_widgets as lw

from .ranks_monitor import tiny_llama


def _counting_llama(dropout: float = 0.1):
    """The tiny Llama (with attention dropout: replays must draw the same) and its optimizer."""
    model = tiny_llama(dropout)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _counting(g: torch.Generator, rows: int = 8, length: int = 16) -> torch.Tensor:
    """Rows counting up from a random start (mod 64): learnt in a few dozen steps."""
    return (torch.randint(0, 64, (rows, 1), generator=g) + torch.arange(length)) % 64


def _train(model, optimizer, monitor, batches, accumulate: int = 1):
    """A plain loop; the gradients each step had, to compare replays with."""
    seen = {}
    for step, (ids, labels) in enumerate(batches, start=1):
        optimizer.zero_grad()
        for part_ids, part_labels in zip(ids.chunk(accumulate), labels.chunk(accumulate)):
            loss = model(input_ids=part_ids, labels=part_labels).loss
            (loss / accumulate if accumulate > 1 else loss).backward()
        seen[step] = {n: p.grad.clone() for n, p in model.named_parameters()}
        monitor.step(loss=loss)
        optimizer.step()
    return seen


def _mislabelled(steps: int = 42, bad_step: int = 40, bad_row: int = 5):
    g = torch.Generator().manual_seed(0)
    batches = []
    for step in range(1, steps + 1):
        ids = _counting(g)
        labels = ids.clone()
        if step == bad_step:
            labels[bad_row] = torch.randint(0, 64, (16,), generator=g)
        batches.append((ids, labels))
    return batches


@pytest.fixture(scope="module")
def mislabelled_run():
    model, optimizer = _counting_llama()
    monitor = lw.GradientMonitor(model, warn=False, keep=4, keep_weights=8)
    seen = _train(model, optimizer, monitor, _mislabelled())
    return model, monitor, seen


def test_a_mislabelled_example_is_an_incident_that_replays_bit_for_bit(mislabelled_run):
    model, monitor, seen = mislabelled_run
    incident = next(i for i in monitor.incidents if i.step == 40)
    assert "exploding" in incident.kinds and incident.rank == 0 and incident.world_size == 1
    assert incident.worst == (0, 5)  # the mislabelled row has the highest loss
    assert incident.example_losses[0][5] > 10 * sorted(incident.example_losses[0])[3]
    torch.testing.assert_close(incident.batch["labels"][5], _mislabelled()[39][1][5], rtol=0, atol=0)
    replay = monitor.replay(incident)
    assert replay.exact and replay.matches
    for name, grad in seen[40].items():  # dropout on: the same random draws, the same gradients
        assert torch.equal(replay.gradients[name], grad), name
    assert replay.example_losses[0] == pytest.approx(incident.example_losses[0], rel=1e-6)
    assert not replay.hits and replay.stopped_at is None
    assert model.training and all(p.grad is not None for p in model.parameters())  # training untouched
    assert "incidents" in monitor.record and monitor.record["incidents"][0]["step"] == incident.step
    assert monitor.ranks_dataframe().empty and monitor.record["ranks"] == 1  # one process


def test_the_ring_keeps_the_last_steps_only(mislabelled_run):
    _, monitor, _ = mislabelled_run
    assert [step for step, _ in monitor.flight.ring] == [39, 40, 41, 42]
    assert 0 < monitor.flight.nbytes < 4 * (2 * 8 * 16 * 8 + 2 * 5200)  # ids + labels (int64) + RNG state
    forwards = monitor.flight.forwards_of(41)
    assert len(forwards) == 1 and set(forwards[0].inputs) >= {"input_ids", "labels"}


def test_a_nan_embedding_row_names_the_module():
    model, _ = _counting_llama(dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    with torch.no_grad():
        model.model.embed_tokens.weight[63] = float("nan")  # a token added with a bad initial row
    monitor = lw.GradientMonitor(model, warn=False, stop_on="nonfinite")
    g = torch.Generator().manual_seed(0)
    batches = [(ids, ids) for ids in (torch.randint(0, 60, (4, 12), generator=g) for _ in range(8))]
    batches[5][0][1, 4] = 63
    with pytest.raises(lw.TrainingStopped, match="step 6: nonfinite"):
        _train(model, optimizer, monitor, batches)
    (incident,) = monitor.incidents
    assert incident.step == 6 and incident.kinds[0] == "nonfinite" and incident.worst == (0, 1)
    replay = monitor.replay(incident)
    assert replay.stopped_at.module == "model.embed_tokens" and replay.stopped_at.phase == "forward"
    assert "its own weight holds non-finite values" in replay.reason
    assert replay.to_dataframe().phase.tolist()[:2] == ["forward", "backward"]


def test_gradient_accumulation_replays_every_micro_batch():
    model, optimizer = _counting_llama()
    monitor = lw.GradientMonitor(model, warn=False, spike=None, vanishing=0, exploding=1e-9)  # every step alerts once
    seen = _train(model, optimizer, monitor, _mislabelled(steps=2), accumulate=2)
    (incident,) = monitor.incidents
    assert incident.step == 1 and len(incident.forwards) == 2 and len(incident.batches) == 2
    replay = monitor.replay(incident)
    for name, grad in seen[1].items():
        assert torch.equal(replay.gradients[name], grad), name


def test_replay_without_the_weights_warns_and_on_another_architecture_refuses(mislabelled_run, tiny_gpt2):
    model, monitor, _ = mislabelled_run
    incident = monitor.incidents[0]
    kept, incident.weights = incident.weights, None
    try:
        with pytest.warns(UserWarning, match="kept no weights"):
            replay = monitor.replay(incident)
        assert not replay.exact
        exact = monitor.replay(incident, state=kept)  # a checkpoint of that step
        assert exact.exact and exact.matches
    finally:
        incident.weights = kept
    with pytest.raises(lw.InputError, match="monitored architecture"):
        monitor.replay(incident, model=tiny_gpt2)
    with pytest.raises(lw.WrongTypeError, match="one of monitor.incidents"):
        monitor.replay("step 40")


def test_what_is_not_kept():
    model, optimizer = _counting_llama()
    monitor = lw.GradientMonitor(model, warn=False, keep=0, vanishing=0, exploding=1e-9)  # keep=0: no recorder at all
    _train(model, optimizer, monitor, _mislabelled(steps=2))
    assert monitor.alerts and not monitor.incidents and not model._forward_pre_hooks
    monitor.detach()
    monitor = lw.GradientMonitor(model, warn=False)
    with torch.no_grad():  # evaluation: not a training forward
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))
    assert not monitor.flight.pending
    monitor.detach()
    assert not model._forward_pre_hooks and not model._forward_hooks  # detach takes the recorder's hooks off


def test_a_failed_step_keeps_its_forwards_for_the_retry():
    model, _ = _counting_llama(dropout=0.0)
    monitor = lw.GradientMonitor(model, warn=False)
    ids = _counting(torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    original = monitor._record
    monitor._record = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)  # interrupted mid-step
    with pytest.raises(KeyboardInterrupt):
        monitor.step()
    monitor._record = original
    assert monitor.step_count == 0 and len(monitor.flight.pending) == 1
    monitor.step()
    assert monitor.flight.forwards_of(1) is not None and not monitor.flight.pending


def test_a_huge_norm_of_finite_values_is_not_called_nonfinite():
    model, _ = _counting_llama(dropout=0.0)
    monitor = lw.GradientMonitor(model, warn=False)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e30)  # finite, but its square overflows float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = monitor.step()
    assert all(r["grad_norm"] > 1e30 and r["grad_norm"] < float("inf") for r in record["rows"])
    assert {a["kind"] for a in monitor.alerts} == {"exploding"}
    copy.deepcopy(monitor.record)  # JSON-able data only


def test_a_monitor_let_go_of_takes_its_hooks_off_the_model():
    model, _ = _counting_llama()
    lw.GradientMonitor(model)  # made and dropped, never detached
    gc.collect()
    assert not model._forward_pre_hooks and not model._forward_hooks
    lw.GradientMonitor(model).detach()  # and another may attach
