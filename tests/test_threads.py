"""A model shared with other threads: while any of our runs holds it, the user's own forwards
on another thread (a training loop: train mode with dropout, backward) get exactly the plain
model's outputs and gradients (README: "What a model shared with other threads is guaranteed")."""

from __future__ import annotations

import threading

import pytest
import torch

import llm_widgets as lw

PROMPT = "It is a truth universally acknowledged, that a single man"
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"

ANALYSES = {
    "trace with edits": lambda lm, tr: lm.trace(PROMPT, max_new_tokens=3, edits=[lw.ScaleAttention(0.0, keys=(0, 3))]),
    "trace sampled": lambda lm, tr: lm.trace(PROMPT, max_new_tokens=3, do_sample=True, seed=1),
    "logit lens": lambda lm, tr: tr.logit_lens(k=3),
    "patching, heads": lambda lm, tr: lw.patch(lm, CLEAN, CORRUPTED, " Mary", site="heads", progress=False),
    "patching, residual": lambda lm, tr: lw.patch(lm, CLEAN, CORRUPTED, " Mary", progress=False),
    "ablation sweep": lambda lm, tr: lw.ablation_sweep(tr, progress=False),
    "grad x input": lambda lm, tr: tr.attribute(),
    "attention x grad": lambda lm, tr: tr.attribute(method="attention_x_grad"),
    "integrated gradients": lambda lm, tr: tr.attribute(method="integrated_gradients", n_steps=4),
    "profile": lambda lm, tr: lw.profile(lm, PROMPT, max_new_tokens=2, repeats=1),
}


def _training_steps(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> list[tuple[torch.Tensor, list]]:
    """What a user's loop computes: a seeded forward (dropout on in train mode) and its gradients."""
    seen = []
    for step in range(steps):
        torch.manual_seed(step)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        seen.append((out.logits.detach().clone(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    return seen


@pytest.mark.parametrize("training", [True, False], ids=["train mode", "eval mode"])
def test_forwards_on_another_thread_are_the_plain_models_while_each_analysis_runs(training):
    lm = lw.load_model("tiny-gpt2")
    model = lm.model
    model.train(training)
    ids = torch.tensor([lm.tokenizer(PROMPT)["input_ids"]])
    expected = _training_steps(model, ids, steps=6)
    tr = lm.trace(PROMPT, max_new_tokens=2)
    for name, analysis in ANALYSES.items():
        if training and name == "trace sampled":
            continue  # sampling seeds torch's one global generator, which dropout draws from too (README)
        seen, errors, done = [], [], threading.Event()

        def loop(seen=seen, errors=errors, done=done):
            try:
                while not done.is_set() or not seen:
                    seen.append(_training_steps(model, ids, steps=6))
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            for _ in range(2):
                analysis(lm, tr)
        finally:
            done.set()
            thread.join(120)
        assert not errors, (name, errors)
        for run in seen:
            for (logits, grads), (want_logits, want_grads) in zip(run, expected):
                assert torch.equal(logits, want_logits), name
                assert all(torch.equal(g, w) for g, w in zip(grads, want_grads)), name
        assert model.training == training and all(p.requires_grad for p in model.parameters()), name


def test_a_run_refuses_results_when_another_thread_switches_the_mode():
    lm = lw.load_model("tiny-gpt2")
    switched = threading.Event()

    def hook(*_):  # inside the run: another thread calls model.train()
        if not switched.is_set():
            thread = threading.Thread(target=lm.model.train)
            thread.start()
            thread.join()
            switched.set()

    handle = lm.model.transformer.h[0].register_forward_pre_hook(hook)
    try:
        with pytest.raises(lw.InputError, match="switched to training mode during this run"):
            lm.trace(PROMPT)
    finally:
        handle.remove()
    assert lm.model.training  # what the other thread asked for stays
    lm.model.eval()
    assert lm.trace(PROMPT).output_text is not None
