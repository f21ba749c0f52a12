"""Our own calls into torch and transformers are warning-free, on the locked versions
and on the newest ones (make test-latest): a Python warning fails these tests, and so
does a warning logged by transformers (its deprecations are log lines, not warnings)."""

from __future__ import annotations

import contextlib
import logging
import warnings

import pytest
import torch

import llm_widgets as lw


@pytest.fixture
def strict(caplog):
    @contextlib.contextmanager
    def block():
        caplog.clear()
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
            warnings.simplefilter("error")
            yield
        logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
        assert not logged, "warnings logged:\n" + "\n".join(logged)

    return block


def test_traces_are_warning_free(tiny_gpt2, strict):
    with strict():
        tiny_gpt2.trace("Hello", max_new_tokens=2)
        tiny_gpt2.trace("Hello", max_new_tokens=3, do_sample=True, seed=1)
        tiny_gpt2.trace("Hello", max_new_tokens=3, use_cache=False)
        tr = tiny_gpt2.trace(
            "It is a truth universally acknowledged",
            max_new_tokens=4,
            edits=[lw.ScaleAttention(3.0, keys=(0, 3)), lw.AblateHead(1, 2)],
        )
        tr.attention(2, 1)
        lw.replay(tr.record, tiny_gpt2)


def test_attribution_is_warning_free(tiny_gpt2, strict):
    tr = tiny_gpt2.trace("It is a truth universally acknowledged", max_new_tokens=2)
    with strict():
        for method in ("grad_x_input", "attention_x_grad", "occlusion"):
            tr.attribute(method=method)
        tr.attribute(method="integrated_gradients", n_steps=4)


def test_the_monitor_is_warning_free(tiny_gpt2, strict):
    import copy

    model = copy.deepcopy(tiny_gpt2.model).train().requires_grad_(True)
    batch = torch.randint(0, 4096, (2, 16))
    with strict():
        monitor = lw.GradientMonitor(model, histograms_every=2, updates_every=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(3):
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            monitor.step(loss=loss)
            optimizer.step()
            optimizer.zero_grad()
        monitor.to_dataframe()
        monitor.detach()
