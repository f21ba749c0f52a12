"""One model, many callers; interrupts anywhere; a seeded fuzz over what users pass in.
After all of it the model is bit-identical and its attention setting restored."""

from __future__ import annotations

import random
import threading
import traceback

import pytest
import torch
import traitlets

import llm_widgets as lw
from llm_widgets.trace.capture import STATE

PROMPTS = ["It is a truth universally acknowledged", "Call me Ishmael.", "In the beginning God created"]


def _hooks(model):
    # transformers installs output-capturing hooks of its own the first time attentions are asked
    # for: compare with what was there before, not with none
    return [(tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for m in model.modules()]


def _snapshot(lm):
    model = lm.model
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        model.config._attn_implementation,
        model.training,
        [p.requires_grad for p in model.parameters()],
        _hooks(model),
    )


def _assert_unchanged(lm, snapshot):
    weights, implementation, training, flags, hooks = snapshot
    model = lm.model
    assert model.config._attn_implementation == implementation
    assert model.training == training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert not any(STATE in m.__dict__ for m in model.modules())
    assert _hooks(model) == hooks


def _job(i: int):
    edits = [lw.ScaleAttention(4.0, keys=(0, 3), layers=[1, 2])] if i % 2 else []
    return PROMPTS[i % len(PROMPTS)], edits


def test_overlapping_runs_on_one_model_equal_serial_runs(tiny_gpt2):
    jobs = [_job(i) for i in range(8 * 25)]
    serial = {}
    for prompt, edits in jobs[:6]:  # every distinct job
        serial[(prompt, bool(edits))] = tiny_gpt2.trace(prompt, max_new_tokens=3, edits=edits).generated_ids
    before = _snapshot(tiny_gpt2)
    results, errors = [], []

    def worker(thread: int):
        try:
            for n in range(25):
                prompt, edits = jobs[thread * 25 + n]
                tr = tiny_gpt2.trace(prompt, max_new_tokens=3, edits=edits)
                results.append(((prompt, bool(edits)), tr.generated_ids, tr.attention(1, 0).shape))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 200
    for key, ids, shape in results:
        assert ids == serial[key], key
        assert shape[0] == shape[1] == len(tiny_gpt2.tokenizer(key[0])["input_ids"]) + 3
    _assert_unchanged(tiny_gpt2, before)


def test_a_forward_on_another_thread_waits_for_the_run_and_gets_the_plain_model(tiny_gpt2):
    """A training loop in a thread runs the model while a traced run with edits holds it: its
    forward waits at the model's gate until the run has ended, then gets the plain model's
    outputs, never the run's edits."""
    ids = torch.tensor([tiny_gpt2.tokenizer(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        plain = tiny_gpt2.model(input_ids=ids).logits
    seen, during, started, finished = [], [], threading.Event(), threading.Event()

    def hook(*_):  # runs inside the traced run: let the other thread go, see that it waits
        if not started.is_set():
            started.set()
            during.append(finished.wait(1.0))

    handle = tiny_gpt2.model.transformer.h[0].register_forward_pre_hook(hook)

    def other():
        started.wait(30)
        with torch.no_grad():
            seen.append(tiny_gpt2.model(input_ids=ids).logits)
        finished.set()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        tiny_gpt2.trace(PROMPTS[1], max_new_tokens=2, edits=[lw.ScaleAttention(0.0, keys=(0, 2))])
    finally:
        handle.remove()
        thread.join()
    assert during == [False]  # it did not run while the run held the model
    torch.testing.assert_close(seen[0], plain, atol=0, rtol=0)


def test_the_lock_times_out_with_a_clear_message(tiny_gpt2):
    from llm_widgets.trace.locking import exclusive

    held, done = threading.Event(), threading.Event()

    def holder():
        with exclusive(tiny_gpt2.model):
            held.set()
            done.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(30)
    waited = []
    try:
        with pytest.raises(lw.ModelBusyError, match="busy with another run"):
            with exclusive(tiny_gpt2.model, on_wait=lambda: waited.append(1), timeout=0.2):
                pass
    finally:
        done.set()
        thread.join()
    assert waited == [1]


def test_interrupts_at_every_step_of_a_traced_generate_leave_the_model_restored(tiny_gpt2):
    before = _snapshot(tiny_gpt2)
    calls = []
    counter = tiny_gpt2.model.transformer.h[3].register_forward_hook(lambda *_: calls.append(1))
    tiny_gpt2.trace(PROMPTS[0], max_new_tokens=6, edits=[lw.ScaleAttention(2.0, keys=(0, 2))])
    counter.remove()
    total = len(calls)  # forwards of the last block over one traced generate
    assert total >= 7
    for at in range(total):
        seen = []

        def hook(*_, seen=seen, at=at):
            seen.append(1)
            if len(seen) > at:
                raise KeyboardInterrupt

        handle = tiny_gpt2.model.transformer.h[3].register_forward_hook(hook)
        try:
            with pytest.raises(KeyboardInterrupt):
                tiny_gpt2.trace(PROMPTS[0], max_new_tokens=6, edits=[lw.ScaleAttention(2.0, keys=(0, 2))])
        finally:
            handle.remove()
        _assert_unchanged(tiny_gpt2, before)
    assert tiny_gpt2.trace(PROMPTS[0], max_new_tokens=2).generated_ids  # and it still runs


# --- fuzz: never a raw error from torch or transformers, never a changed model ---


def _random_text(rng: random.Random) -> str:
    pieces = [
        "hello",
        " ",
        "\u202e",
        "\u200b",
        "\x00",
        "\x1b[31m",
        "é",
        "日本",
        "🙂",
        "<b>",
        "\n",
        "\t",
        "a" * 300,
        "\ufeff",
        "\U0001f600" * 3,
        "\r\n",
        "\u0301",
        "",
    ]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))


def _random_value(rng: random.Random):
    return rng.choice(
        [
            0,
            1,
            3,
            -1,
            10**9,
            2.5,
            float("nan"),
            float("inf"),
            True,
            None,
            "2",
            [0, 2],
            (3, 1),
            [[0, 1], [2, 9]],
            (),
            [True],
            -0.0,
        ]
    )


def _fuzz_analysis(rng: random.Random, lm, trace):
    """The analyses, views and requests of round three (issue 26): random values in every slot."""
    v = [_random_value(rng) for _ in range(4)]
    kind = rng.choice(["lens", "patch", "sweep", "profile_step", "monitor", "request", "view", "vocab", "model"])
    if kind == "lens":
        return lambda: trace.logit_lens(k=v[0], positions=rng.choice([v[1], "all", "first"]), target=v[2])
    if kind == "patch":
        site = rng.choice(["residual", "heads", "mlp", "attention", v[0]])
        return lambda: lw.patch(lm, "Call me Ishmael.", rng.choice([v[1], "Call me Ahab."]), " the", v[2], site=site)
    if kind == "sweep":
        return lambda: lw.ablation_sweep(trace, v[0], method=rng.choice(["zero", "mean", v[1]]), budget_bytes=v[2])
    if kind == "profile_step":
        batch = rng.choice([v[0], {"input_ids": torch.tensor([[1, 2, 3]])}, {"x": v[1]}])
        return lambda: lw.profile_step(lm, batch, rng.choice([v[2], torch.optim.SGD([torch.zeros(1)], lr=0.0)]))
    if kind == "monitor":
        key = v[2] if isinstance(v[2], (int, float, str, tuple, type(None))) else str(v[2])
        return lambda: lw.GradientMonitor(lm.model, groups=rng.choice([v[0], {"g": v[1]}, {key: "h"}]), optimizer=v[3])
    if kind == "request":
        view = lw.AttentionView(trace)
        request = rng.choice([v[0], {"what": rng.choice(["overview", "row", "tile", "heads", "grid", "export"])}])
        if isinstance(request, dict):
            request.update({k: _random_value(rng) for k in rng.sample(["layer", "head", "query", "size", "q0"], 3)})
        return lambda: _answered(view, request)
    if kind == "view":
        return lambda: setattr(lw.LensView(trace), "selected", v[0])
    if kind == "vocab":
        return lambda: lw.VocabTokenizer(rng.choice([v[0], [_random_text(rng) for _ in range(3)]]))
    return lambda: lw.LanguageModel(lm.model, rng.choice([v[0], "gpt2", lm.tokenizer]), name=v[1])


class Replied(Exception):
    """A front-end request's error reply (the kernel raises nothing: the front end shows it)."""


def _answered(view, request) -> None:
    reply, _ = view.request(request, [])
    if reply.get("type") == "error":
        raise Replied(reply["message"])


def _fuzz_case(rng: random.Random, lm, trace):
    kind = rng.choice(["trace", "edit", "attention", "record", "attribute", "top_k", "analysis", "analysis"])
    if kind == "analysis":
        return _fuzz_analysis(rng, lm, trace)
    if kind == "trace":
        prompt = rng.choice(
            [_random_text(rng), [rng.randint(-5, 5000) for _ in range(rng.randint(0, 4))], _random_value(rng)]
        )
        return lambda: lm.trace(
            prompt, max_new_tokens=rng.choice([0, 1, 2, -1, True, 2.0]), seed=rng.choice([None, 0, -3, 1.5, "7"])
        )
    if kind == "edit":
        args = [_random_value(rng) for _ in range(5)]
        return lambda: lm.trace(
            "Call me Ishmael.",
            max_new_tokens=1,
            edits=[lw.ScaleAttention(args[0], keys=args[1], queries=args[2], layers=args[3], heads=args[4])],
        )
    if kind == "attention":
        args = [_random_value(rng) for _ in range(4)]
        return lambda: trace.attention(args[0], args[1], queries=args[2], keys=args[3])
    if kind == "record":
        record = {k: v for k, v in trace.record.items()}
        key = rng.choice(list(record))
        record[key] = _random_value(rng)
        return lambda: lw.replay(record, lm)
    if kind == "attribute":
        return lambda: trace.attribute(
            rng.choice([None, " the", "", 5, -1, " x y z"]),
            method=rng.choice(["grad_x_input", "nope", 3]),
            step=_random_value(rng),
        )
    return lambda: trace.top_k(_random_value(rng), _random_value(rng))


def test_fuzz_bad_input_gets_our_clear_errors(tiny_gpt2):
    rng = random.Random(1234)
    trace = tiny_gpt2.trace("Call me Ishmael.", max_new_tokens=2)
    before = _snapshot(tiny_gpt2)
    tried, refused, raw = 0, 0, []
    for _ in range(1500):
        case = _fuzz_case(rng, tiny_gpt2, trace)
        tried += 1
        try:
            case()
        except lw.LLMWidgetsError as error:  # ours: InputError (a ValueError), WrongTypeError (a TypeError)
            refused += 1
            where = traceback.extract_tb(error.__traceback__)[-1].filename
            if "llm_widgets" not in where or not str(error):
                raw.append(f"{type(error).__name__} from {where}: {error}")
        except (Replied, traitlets.TraitError) as error:  # a request's error reply; a trait's check, naming it
            refused += 1
            if not str(error) or (isinstance(error, traitlets.TraitError) and "selected" not in str(error)):
                raw.append(f"{type(error).__name__}: {error}")
        except Exception as error:  # noqa: BLE001 - any other exception (a raw ValueError too) is a defect
            raw.append(f"{type(error).__name__}: {error}")
    print(f"fuzz: {tried} inputs tried, {refused} refused with a clear error, {len(raw)} raw")
    assert not raw, "\n".join(raw[:20])
    _assert_unchanged(tiny_gpt2, before)
