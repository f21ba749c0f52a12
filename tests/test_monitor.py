"""GradientMonitor: norms against torch, planted explosions and vanishing, steering, the HF Trainer."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import llm_widgets as lw
from llm_widgets.training.monitor import layer_group


def _fresh(tiny_gpt2):
    """A trainable copy of tiny-gpt2 (float32), so tests never touch the shared model."""
    import copy

    model = copy.deepcopy(tiny_gpt2.model).float().eval()  # eval: no dropout, so gradients are repeatable
    model.requires_grad_(True)
    return model


def _batch(tiny_gpt2, text="It is a truth universally acknowledged, that a single man in possession"):
    ids = tiny_gpt2.tokenizer(text, return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "labels": ids}


def _backward(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss


def test_groups_follow_the_blocks(tiny_gpt2):
    model = _fresh(tiny_gpt2)
    monitor = lw.GradientMonitor(model)
    assert monitor.groups == ["embeddings", "layer 0", "layer 1", "layer 2", "layer 3", "other"]
    assert layer_group("model.layers.11.self_attn.q_proj.weight") == "layer 11"
    assert layer_group("transformer.h.2.mlp.c_fc.bias") == "layer 2"
    monitor.detach()


def test_norms_equal_torch(tiny_gpt2):
    model = _fresh(tiny_gpt2)
    monitor = lw.GradientMonitor(model)
    loss = _backward(model, _batch(tiny_gpt2))
    record = monitor.step(loss=loss, lr=1e-3)
    grads = [p.grad for p in model.parameters()]
    total = torch.nn.utils.get_total_norm(grads).item()
    assert record["steps"]["global_norm"] == pytest.approx(total, rel=1e-5)
    assert record["steps"]["loss"] == pytest.approx(loss.item()) and record["steps"]["lr"] == 1e-3
    by_group = {r["group"]: r["grad_norm"] for r in record["rows"]}
    layer2 = [p.grad for n, p in model.named_parameters() if ".h.2." in n]
    assert by_group["layer 2"] == pytest.approx(torch.nn.utils.get_total_norm(layer2).item(), rel=1e-5)
    monitor.detach()
    per_param = lw.GradientMonitor(model, groups="parameters")  # one norm per parameter
    rows = per_param.step()["rows"]
    norms = {r["group"]: r["grad_norm"] for r in rows}
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(p.grad.norm().item(), rel=1e-5, abs=1e-12)
    per_param.detach()


def test_update_to_weight_ratio_after_the_optimizer_step(tiny_gpt2):
    model = _fresh(tiny_gpt2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = lw.GradientMonitor(model, optimizer=optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with monitor:
        _backward(model, _batch(tiny_gpt2))
        optimizer.step()  # the monitor reads the gradients in the optimizer's pre-hook
    frame = monitor.to_dataframe()
    row = frame[(frame.step == 1) & (frame.group == "layer 1")].iloc[0]
    names = [n for n in before if ".h.1." in n]
    change = math.sqrt(sum((dict(model.named_parameters())[n].detach() - before[n]).pow(2).sum().item() for n in names))
    size = math.sqrt(sum(before[n].pow(2).sum().item() for n in names))
    assert row.update_ratio == pytest.approx(change / size, rel=1e-4)
    assert set(frame.columns) >= {
        "step",
        "group",
        "grad_norm",
        "steered_norm",
        "update_ratio",
        "loss",
        "lr",
        "global_norm",
    }
    assert frame.lr.iloc[0] == 0.1
    monitor.detach()


def test_planted_explosion_is_found_at_its_layer_and_step(tiny_gpt2):
    model = _fresh(tiny_gpt2)
    monitor = lw.GradientMonitor(model, spike=7.0)
    batch = _batch(tiny_gpt2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lw.GradientWarning)
        for _ in range(4):
            _backward(model, batch)
            monitor.step()
    with torch.no_grad():  # plant it: the layer norm feeding layer 2's attention grows 1000-fold
        model.transformer.h[2].ln_1.weight.mul_(1e3)
    _backward(model, batch)
    with pytest.warns(
        lw.GradientWarning, match=r"step 5: exploding gradient in layer 2 \(norm [\d.]+, \d+x its median"
    ):
        monitor.step()
    assert [(a["step"], a["group"], a["kind"]) for a in monitor.alerts] == [(5, "layer 2", "exploding")]
    monitor.detach()
    absolute = lw.GradientMonitor(model, exploding=1.0, spike=None, warn=False)
    _backward(model, batch)
    rows = absolute.step()["rows"]
    assert {a["group"] for a in absolute.alerts} == {r["group"] for r in rows if r["grad_norm"] > 1.0} >= {"layer 2"}
    absolute.detach()


def test_planted_vanishing_and_nan_are_found_and_can_stop_training(tiny_gpt2):
    model = _fresh(tiny_gpt2)
    monitor = lw.GradientMonitor(model, stop_on="nonfinite")
    batch = _batch(tiny_gpt2)
    _backward(model, batch)
    for p in model.transformer.h[1].parameters():
        p.grad.zero_()  # plant a vanishing layer
    with pytest.warns(lw.GradientWarning, match="step 1: vanishing gradient in layer 1"):
        monitor.step()
    assert [(a["step"], a["group"], a["kind"]) for a in monitor.alerts] == [(1, "layer 1", "vanishing")]
    _backward(model, batch)
    model.transformer.h[3].mlp.c_proj.weight.grad[0, 0] = float("nan")
    with (
        pytest.raises(lw.TrainingStopped, match="step 2: nonfinite gradient in layer 3"),
        pytest.warns(lw.GradientWarning),
    ):
        monitor.step()
    monitor.detach()


def test_steering_scales_and_clips_a_group(tiny_gpt2):
    model = _fresh(tiny_gpt2)
    monitor = lw.GradientMonitor(model)
    batch = _batch(tiny_gpt2)
    _backward(model, batch)
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert monitor.steer("layer 2", scale=0.5) == ["layer 2"]
    record = monitor.step()
    for name, p in model.named_parameters():
        expected = raw[name] * 0.5 if ".h.2." in name else raw[name]
        torch.testing.assert_close(p.grad, expected)
    row = next(r for r in record["rows"] if r["group"] == "layer 2")
    assert row["steered_norm"] == pytest.approx(row["grad_norm"] * 0.5, rel=1e-5)
    monitor.steer("layer 2")  # scale 1, no clip: steering removed
    monitor.steer(r"layer [0-3]", clip=0.01)
    _backward(model, batch)
    record = monitor.step()
    for row in record["rows"]:
        if row["group"].startswith("layer"):
            assert row["steered_norm"] == pytest.approx(min(row["grad_norm"], 0.01), rel=1e-4)
    layer0 = [p.grad for n, p in model.named_parameters() if ".h.0." in n]
    assert torch.nn.utils.get_total_norm(layer0).item() == pytest.approx(0.01, rel=1e-4)
    assert [(e["step"], e["pattern"], e["scale"], e["clip"]) for e in monitor.steering_log] == [
        (1, "layer 2", 0.5, None),
        (2, "layer 2", 1.0, None),
        (2, "layer [0-3]", 1.0, 0.01),
    ]
    import json

    record = json.loads(json.dumps(monitor.record))  # JSON-able
    assert record["steering"] == monitor.steering_log and record["steps"] == 2
    monitor.detach()


def test_bad_input_says_what_to_do(tiny_gpt2):
    model = _fresh(tiny_gpt2)
    monitor = lw.GradientMonitor(model)
    with pytest.raises(ValueError, match="matches no group.*close names.*layer 1"):
        monitor.steer("layer_1", scale=0.5)
    with pytest.raises(RuntimeError, match="already has a GradientMonitor"):
        lw.GradientMonitor(model)
    with pytest.raises(RuntimeError, match="after loss.backward"):
        monitor.step()
    monitor.detach()
    lw.GradientMonitor(model).detach()  # after detach, a new one may attach
    with pytest.raises(ValueError, match="matches no trainable parameter; close names"):
        lw.GradientMonitor(model, groups={"attention": r"attn\.c_atn"})
    frozen = _fresh(tiny_gpt2).requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of this model is frozen"):
        lw.GradientMonitor(frozen)
    with pytest.raises(ValueError, match="scale must be"):
        lw.GradientMonitor(frozen.requires_grad_(True)).steer("layer 1", scale=-1)


def test_with_the_hf_trainer(tiny_gpt2, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _fresh(tiny_gpt2)
    # every step alerts (exploding above 1e-9): the flight recorder keeps step 1, the Trainer's own batch
    monitor = lw.GradientMonitor(model, histograms_every=2, updates_every=1, vanishing=0, exploding=1e-9, warn=False)
    ids = tiny_gpt2.tokenizer(
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no "
        "money in my purse, and nothing particular to interest me on shore"
    )["input_ids"]
    data = [dict(input_ids=ids[i : i + 6], labels=ids[i : i + 6]) for i in range(0, 24, 6)] * 2
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        max_grad_norm=0.0,
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-3,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.add_callback(monitor.callback)
    trainer.train()
    frame = monitor.to_dataframe()
    assert sorted(frame.step.unique()) == [1, 2, 3, 4]
    assert frame.loss.notna().all() and frame.update_ratio.notna().all() and (frame.grad_norm > 0).all()
    assert {h["step"] for h in monitor.histograms} == {1, 2, 4}
    assert sum(monitor.histograms[0]["counts"]) + monitor.histograms[0]["zeros"] > 0
    (incident,) = monitor.incidents
    assert incident.step == 1 and set(incident.batch) >= {"input_ids", "labels"}
    assert monitor.replay(incident).matches  # the Trainer's loss call (its kwargs too), dropout and all
    monitor.detach()


# --- the widget: charts fed from the monitor, sliders that steer ---


def test_widget_streams_steps_and_sliders_steer(tiny_gpt2, tmp_path):
    model = _fresh(tiny_gpt2)
    monitor = lw.GradientMonitor(model, histograms_every=3, updates_every=2)
    widget = lw.GradientMonitorView(monitor)
    assert widget.controls.groups == monitor.groups
    batch = _batch(tiny_gpt2)
    for _ in range(6):
        _backward(model, batch)
        monitor.step(loss=1.0)
    monitor.flush()
    assert widget.controls.steps_plotted == 6 and widget.controls.step == 6
    assert widget.norm_source.data["step"] == [1, 2, 3, 4, 5, 6]
    assert widget.norm_source.data["g2"][0] == pytest.approx(monitor.rows[2]["grad_norm"])
    assert widget.ratio_source.data["step"] == [1, 2, 4, 6]  # measured on step 1 and every 2nd
    assert widget.hist_source.data["step"] == [1, 3, 6]
    lo, mid, hi = (widget.hist_source.data[f"g1_{q}"][0] for q in ("lo", "mid", "hi"))
    assert -12 <= lo <= mid <= hi <= 4
    # a slider moved in the browser: the monitor steers that group from the next step
    widget.controls.steering = {"layer 1": {"scale": 0.5, "clip": None}}
    assert monitor.steering["layer 1"].scale == 0.5 and widget.controls.applied["layer 1"]["scale"] == 0.5
    _backward(model, batch)
    row = next(r for r in monitor.step()["rows"] if r["group"] == "layer 1")
    assert row["steered_norm"] == pytest.approx(0.5 * row["grad_norm"], rel=1e-5)
    assert monitor.steering_log[-1]["step"] == 7
    widget.controls.steering = {}
    assert "layer 1" not in monitor.steering
    for ext in ("png", "svg", "html"):
        path = widget.save(tmp_path / f"monitor.{ext}")
        assert path.stat().st_size > 1000
    html = (tmp_path / "monitor.html").read_text()
    assert "cdn.bokeh.org" not in html and "<script src=" not in html
    monitor.detach()


def test_throttle_sends_at_most_every_interval(tiny_gpt2):
    model = _fresh(tiny_gpt2)
    monitor = lw.GradientMonitor(model)
    widget = lw.GradientMonitorView(monitor)
    widget.min_interval = 3600  # nothing goes out during the loop
    flushes = []
    original = widget.flush
    widget.flush = lambda: (flushes.append(1), original())
    batch = _batch(tiny_gpt2)
    for _ in range(5):
        _backward(model, batch)
        monitor.step()
    assert flushes == [] and widget.controls.steps_plotted == 0
    monitor.flush()
    assert widget.controls.steps_plotted == 5
    monitor.detach()


def test_a_transformers_model_is_monitored_whole_head_included():
    """A Llama-style model has a `.model` of its own (the base model, no head): the monitor and
    profile_step take the model they are given, not that."""
    from tests.test_trace_architectures import build

    lm = build("llama")
    hf = lm.model
    hf.train()
    for given in (hf, lm):
        monitor = lw.GradientMonitor(given)
        assert len(monitor.params) == sum(1 for p in hf.parameters() if p.requires_grad)
        monitor.detach()
    ids = torch.randint(0, hf.config.vocab_size, (1, 8))
    steps = lw.profile_step(hf, {"input_ids": ids, "labels": ids}, torch.optim.SGD(hf.parameters(), lr=0.0), steps=1)
    assert steps.seconds["forward"] > 0  # the head ran: its loss came back
