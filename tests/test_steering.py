"""Steering the residual stream: lw.SteerResidual is exact (strength 0 is the plain run, the sum is
what a hand-written hook adds, cached generation equals uncached) on the architecture matrix, on
encoder-decoders and on plain PyTorch models; directions are made, saved, loaded and refused where
they do not belong; a steering vector from prompt pairs moves SmolLM2 the expected way."""

from __future__ import annotations

import math

import pytest
import torch

import llm_widgets as lw
from llm_widgets.models.anatomy import anatomy, block_output

from . import test_plain_torch as plain_models
from . import test_seq2seq
from .test_trace_architectures import MASKED, PROMPT
from .test_trace_architectures import arch as arch  # noqa: F401 (the architecture matrix, one model each)
from .test_trace_architectures import lm as lm  # noqa: F401

SPAN = (3, 7)


def _direction(width: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(width, generator=torch.Generator().manual_seed(seed))


def _hand_hooked(block: torch.nn.Module, vector: torch.Tensor, span=None, seq_dim: int = -2):
    """What a user would write: a forward hook adding `vector` to the block's output (at `span`)."""

    def hook(_module, _args, output):
        hidden = block_output(output).clone()
        if span is None:
            hidden = hidden + vector
        elif seq_dim == -2:
            hidden[..., span[0] : span[1], :] += vector
        else:  # torch's sequence-first layout
            hidden[span[0] : span[1]] += vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return block.register_forward_hook(hook)


def test_strength_zero_is_the_plain_run_bit_for_bit(lm):
    plain = lm.trace(PROMPT, keep_logits=True)
    d = _direction(lm.facts.hidden_size)
    zero = lm.trace(PROMPT, keep_logits=True, edits=[lw.SteerResidual(d, layers=[0, 1], strength=0.0)])
    assert torch.equal(zero.logits, plain.logits)


def test_the_sum_is_what_a_hand_hook_adds(lm):
    d = _direction(lm.facts.hidden_size)
    steered = lm.trace(PROMPT, keep_logits=True, edits=[lw.SteerResidual(d, layers=[0], strength=3.0, positions=SPAN)])
    block = anatomy(lm.model, lm.facts.n_layers).blocks[0]
    handle = _hand_hooked(block, 3.0 * d, SPAN)
    try:
        with torch.no_grad():
            expected = lm.model(torch.tensor([PROMPT])).logits[0]
    finally:
        handle.remove()
    torch.testing.assert_close(steered.logits, expected, atol=1e-5, rtol=0)
    plain = lm.trace(PROMPT, keep_logits=True).logits
    assert (steered.logits - plain).abs().max() > 1e-3  # it did steer
    if lm.facts.kind == "causal":  # before the span, nothing changed
        assert torch.equal(steered.logits[: SPAN[0]], plain[: SPAN[0]])
    assert not block._forward_hooks  # ours are gone, the hand hook too


def test_cached_generation_equals_uncached_and_replays(arch, lm):
    if arch in MASKED:
        pytest.skip("masked models do not generate")
    d = _direction(lm.facts.hidden_size)
    for positions in (None, "generated", (12, 17)):
        edits = [lw.SteerResidual(d, layers=[1], strength=4.0, positions=positions)]
        cached = lm.trace(PROMPT, max_new_tokens=8, edits=edits)
        uncached = lm.trace(PROMPT, max_new_tokens=8, edits=edits, use_cache=False)
        assert cached.generated_ids == uncached.generated_ids, positions
        assert lw.replay(cached.record, lm).generated_ids == cached.generated_ids
    # "generated" leaves the prompt's own predictions alone
    plain = lm.trace(PROMPT, keep_logits=True)
    edits = [lw.SteerResidual(d, layers=[1], strength=4.0, positions="generated")]
    assert torch.equal(lm.trace(PROMPT, keep_logits=True, edits=edits).logits, plain.logits)


def test_a_batch_of_candidates_scores_as_each_would_alone(arch, lm):
    """The search's forward gives each row its own edits: every candidate's score equals a run of its
    edits alone (attention on a span, single heads and sets, directions after a block)."""
    if arch in MASKED:
        pytest.skip("the search steers a causal model's next token")
    search = lw.search_steering(lm, PROMPT, 5, 7, span=(2, 6), budget=40, batch_size=8, continuation=4)
    kinds = {c.kind for c in search.candidates}
    assert kinds == {"attention", "direction"} and len(search.candidates) <= 40
    for candidate in search.candidates[::7]:
        p = lm.trace(PROMPT, keep_logits=True, edits=list(candidate.edits)).logits[-1].softmax(-1)
        assert math.isclose(candidate.success, float(p[5] - p[7]), abs_tol=1e-5), candidate


# --- encoder-decoders: the encoder's residual stream and the decoder's ---


@pytest.fixture(scope="module", params=["bart", "t5"])
def seq2seq(request):
    return test_seq2seq.build(request.param)


def test_encoder_decoders_steer_either_stream_exactly(seq2seq):
    lm, source = seq2seq, test_seq2seq.SOURCE
    d = _direction(lm.facts.hidden_size)
    assert torch.equal(
        lm.trace(source, keep_logits=True, edits=[lw.SteerResidual(d, [1], 0.0)]).logits,
        lm.trace(source, keep_logits=True).logits,
    )
    start = torch.tensor([[lm.model.config.decoder_start_token_id]])
    for stack, module in (("encoder", lm.model.get_encoder()), ("decoder", lm.model.get_decoder())):
        block = next(m for m in module.modules() if isinstance(m, torch.nn.ModuleList))[1]
        steered = lm.trace(source, keep_logits=True, edits=[lw.SteerResidual(d, [1], 2.0, stack=stack)])
        handle = _hand_hooked(block, 2.0 * d)
        try:
            with torch.no_grad():
                expected = lm.model(input_ids=torch.tensor([source]), decoder_input_ids=start).logits[0]
        finally:
            handle.remove()
        torch.testing.assert_close(steered.logits, expected, atol=1e-5, rtol=0)
        edits = [lw.SteerResidual(d, [1], 3.0, stack=stack)]
        cached = lm.trace(source, max_new_tokens=5, edits=edits)
        assert cached.generated_ids == lm.trace(source, max_new_tokens=5, edits=edits, use_cache=False).generated_ids
        assert lw.replay(cached.record, lm).generated_ids == cached.generated_ids


# --- plain PyTorch models ---


@pytest.mark.parametrize("kind", sorted(plain_models.MODELS))
def test_plain_pytorch_models_steer_exactly(kind):
    torch.manual_seed(0)
    lm = lw.LanguageModel(plain_models.MODELS[kind]().eval(), vocab=plain_models.VOCAB, name=f"torch-{kind}")
    prompt = plain_models.PROMPT
    d = _direction(plain_models.D)
    plain = lm.trace(prompt, keep_logits=True)
    assert torch.equal(lm.trace(prompt, keep_logits=True, edits=[lw.SteerResidual(d, [1], 0.0)]).logits, plain.logits)
    steered = lm.trace(prompt, keep_logits=True, edits=[lw.SteerResidual(d, [1], 2.0, positions=(2, 4))])
    blocks = lm.model.blocks if kind == "hand_written" else lm.model.encoder.layers
    handle = _hand_hooked(blocks[1], 2.0 * d, (2, 4), seq_dim=-3 if kind == "hand_written" else -2)
    try:
        with torch.no_grad():
            expected = lm.model(steered.input_ids[None])[0]
    finally:
        handle.remove()
    torch.testing.assert_close(steered.logits, expected, atol=1e-5, rtol=0)
    assert (steered.logits - plain.logits).abs().max() > 1e-3
    generated = lm.trace(prompt, max_new_tokens=4, edits=[lw.SteerResidual(d, [2], 5.0, positions="generated")])
    assert lw.replay(generated.record, lm).generated_ids == generated.generated_ids


# --- directions ---


def test_directions_save_load_and_refuse_what_does_not_belong(tmp_path, tiny_gpt2):
    width = tiny_gpt2.facts.hidden_size
    d = lw.Direction(_direction(width), model=tiny_gpt2.name, layer=1, name="test")
    with pytest.raises(lw.InputError, match="the folder .*missing' does not exist; create it first"):
        d.save(tmp_path / "missing" / "d.safetensors")  # (safetensors would name a temporary file of its own)
    path = d.save(tmp_path / "d.safetensors")
    back = lw.Direction.load(path)
    assert back == d and back.layer == 1 and back.model == tiny_gpt2.name
    assert path.stat().st_size < 4 * width + 1024  # small: the vector and a few names
    assert lw.Direction.from_dict(d.to_dict()) == d
    assert math.isclose((-d).norm, d.norm) and math.isclose(d.unit().norm, 1.0, rel_tol=1e-6)
    other = lw.Direction(_direction(width), model="another-model")
    with pytest.raises(lw.InputError, match="was made from another-model, not tiny-gpt2"):
        tiny_gpt2.trace("Hello", edits=[lw.SteerResidual(other, [1], 1.0)])
    with pytest.raises(lw.InputError, match=f"has 7 numbers, and tiny-gpt2's residual stream has {width}"):
        tiny_gpt2.trace("Hello", edits=[lw.SteerResidual(torch.ones(7), [1], 1.0)])
    for strength in (math.nan, math.inf, "2"):
        with pytest.raises(lw.InputError, match="SteerResidual strength must be a finite number"):
            lw.SteerResidual(d, [1], strength)
    with pytest.raises(lw.InputError, match="layer 9 is out of range; this model has blocks 0 to 3"):
        tiny_gpt2.trace("Hello", edits=[lw.SteerResidual(d, [9], 1.0)])
    with pytest.raises(lw.InputError, match="finite"):
        lw.Direction(torch.tensor([1.0, math.nan]))
    with pytest.raises(lw.InputError, match="is for an encoder-decoder"):
        tiny_gpt2.trace("Hello", edits=[lw.SteerResidual(d, [1], 1.0, stack="encoder")])
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(lw.InputError, match="is not a safetensors file"):
        lw.Direction.load(tmp_path / "other.pt")
    with pytest.raises(lw.InputError, match="positive is empty"):
        lw.steering_vector(tiny_gpt2, [], ["Hello"], layer=1)
    with pytest.raises(lw.InputError, match="is 4 tokens"):
        lw.token_direction(tiny_gpt2, "Hello world")


def test_token_direction_makes_its_token_likelier(tiny_gpt2):
    d = lw.token_direction(tiny_gpt2, " city")
    assert d.name == "token ' city'" and len(d) == tiny_gpt2.facts.hidden_size
    token = tiny_gpt2.tokenizer.encode(" city")[0]
    plain = tiny_gpt2.trace("The capital of France is", keep_logits=True).logits[-1].softmax(-1)[token]
    edits = [lw.SteerResidual(d.unit(), [1], 20.0)]
    steered = tiny_gpt2.trace("The capital of France is", keep_logits=True, edits=edits).logits[-1].softmax(-1)[token]
    assert steered > 2 * plain


def test_explaining_a_steered_run_counts_the_steering(tiny_gpt2):
    d = _direction(tiny_gpt2.facts.hidden_size)
    tr = tiny_gpt2.trace("one two three one two", edits=[lw.SteerResidual(d, [0], 2.0, positions=(1, 3))])
    explanation = tr.explain_attention(1, 0, query=4, key=2)
    assert explanation.residual_error < 1e-4  # the steering is a component of its own, and the sum is exact
    assert "steering 0" in explanation.components and explanation.key_side()["steering 0"] != 0.0
    assert "steering 0" not in tiny_gpt2.trace("one two three one two").explain_attention(1, 0, 4, 2).components


# --- a direction with a known effect, on the real model ---

POSITIVE = [
    "I love this, it is wonderful and",
    "What a great, happy day, I feel",
    "This is excellent, delightful and",
    "The food was amazing and the staff",
    "I am so glad and grateful that",
    "Beautiful weather, a joyful morning,",
]
NEGATIVE = [
    "I hate this, it is awful and",
    "What a terrible, sad day, I feel",
    "This is horrible, disgusting and",
    "The food was dreadful and the staff",
    "I am so angry and upset that",
    "Ugly weather, a miserable morning,",
]
HELD_OUT = ["The movie was", "My holiday was", "I think the new phone is", "Overall the concert was"]


def test_a_sentiment_vector_moves_held_out_prompts_and_its_negative_reverses_it(smollm2):
    good = [smollm2.tokenizer.encode(t)[0] for t in (" great", " good", " wonderful", " amazing")]
    bad = [smollm2.tokenizer.encode(t)[0] for t in (" bad", " terrible", " awful", " horrible")]
    direction = lw.steering_vector(smollm2, POSITIVE, NEGATIVE, layer=6)
    assert direction.layer == 6 and direction.model == smollm2.name

    def lean(strength: float) -> float:  # log p(good words) - log p(bad words), mean over held-out prompts
        edits = [lw.SteerResidual(direction, [6], strength)] if strength else []
        total = 0.0
        for prompt in HELD_OUT:
            logp = smollm2.trace(prompt, keep_logits=True, edits=edits).logits[-1].log_softmax(-1)
            total += float(logp[good].logsumexp(0) - logp[bad].logsumexp(0))
        return total / len(HELD_OUT)

    plain, up, down = lean(0.0), lean(4.0), lean(-4.0)
    assert up > plain + 1.0 and down < plain - 1.0, (down, plain, up)  # measured: 1.38 < 2.98 < 4.62
    # the scale the editor's slider uses: the residual stream is an order of magnitude longer
    assert lw.residual_norm(smollm2, HELD_OUT, 6) > 5 * direction.norm
    # and the drift strip: the steered run's tokens project further along the direction
    prompt = HELD_OUT[0]
    plain_strip = lw.projections(smollm2.trace(prompt), direction, 6)
    steered_strip = lw.projections(smollm2.trace(prompt, edits=[lw.SteerResidual(direction, [6], 4.0)]), direction, 6)
    torch.testing.assert_close(steered_strip - plain_strip, torch.full_like(plain_strip, 4.0 * direction.norm))


# --- the editor's directions panel ---


def test_the_editor_steers_with_a_direction_and_draws_the_drift(tmp_path, tiny_gpt2):
    d = lw.Direction(_direction(tiny_gpt2.facts.hidden_size), model=tiny_gpt2.name, layer=1, name="test")
    editor = lw.AttentionEditor(tiny_gpt2, "Hello there my friend", max_new_tokens=6, directions=[d])
    assert editor.steers_directions and editor.n_blocks == 4
    assert editor.direction_view == {"index": 0, "layer": 1} and editor.direction_scale > 0
    before = [v for _, v in editor.strip["before"]]
    assert len(before) == len(editor.unedited) and editor.strip["after"] == editor.strip["before"]
    # what the front end sends when the slider is released: a SteerResidual spec among the edits
    spec = lw.SteerResidual(d, [1], 3.0).to_dict()
    editor.edit_specs = [spec]
    assert editor.error == "" and editor.edits == [lw.SteerResidual(d, [1], 3.0)]
    n = editor.unedited.n_prompt
    after = [v for _, v in editor.strip["after"]]
    for i in range(n):  # the prompt's tokens moved along the direction by exactly 3 x its length
        assert math.isclose(after[i] - before[i], 3.0 * d.norm, rel_tol=1e-4)
    assert lw.replay(editor.trace.record, tiny_gpt2).generated_ids == editor.trace.generated_ids
    # another block: the strip follows, the edit stays where it was
    editor.direction_view = {"index": 0, "layer": 3}
    assert len(editor.strip["before"]) == len(editor.unedited) and editor.edits == [lw.SteerResidual(d, [1], 3.0)]
    # load from a file; a bad path is said in the widget and changes nothing
    saved = (-d).save(tmp_path / "minus.safetensors")
    editor.load_path = str(saved)
    assert len(editor.directions) == 2 and editor.direction_view["index"] == 1 and editor.load_path == ""
    editor.load_path = str(tmp_path / "missing.safetensors")
    assert "no direction file" in editor.error and len(editor.directions) == 2
    with pytest.raises(lw.InputError, match="was made from"):
        editor.add_direction(lw.Direction(d.vector, model="another-model"))
    editor.reset()
    assert editor.strip["after"] == editor.strip["before"]


# --- the steering search ---

RED_BLUE = "Alice has a red ball. Bob has a blue ball. The color of Alice's ball is"  # SmolLM2: " either"
BOB = (7, 12)  # " has a blue ball." : the span that holds the answer we want


@pytest.fixture(scope="module")
def search(smollm2):
    return lw.search_steering(smollm2, RED_BLUE, " blue", " red", span=BOB, budget=96, batch_size=32)


def test_the_search_finds_an_edit_that_flips_a_planted_answer(search, smollm2):
    assert len(search.candidates) <= 96 and search.forwards <= 5  # within its budget, 32 candidates a forward
    assert search.plain.success < 0.05  # p(blue) - p(red) unedited: the model says " either"
    best = search.best()
    assert best is not None and best.success > 0.3 and best.kind == "attention"
    traced = search.trace(best)
    assert traced.output_text.startswith(" blue")  # flipped: it answers with Bob's colour now
    assert lw.replay(traced.record, smollm2).generated_ids == traced.generated_ids
    # the batched scores are the model's own: the same as a run of the candidate's edits alone
    blue, red = (smollm2.tokenizer.encode(t)[0] for t in (" blue", " red"))
    for candidate in (best, next(c for c in search.candidates if c.kind == "direction")):
        p = smollm2.trace(RED_BLUE, keep_logits=True, edits=list(candidate.edits)).logits[-1].softmax(-1)
        assert math.isclose(candidate.success, float(p[blue] - p[red]), abs_tol=1e-4)
    # the front: cheapest first, each more successful than the one before; best() within a cost
    front = search.front
    assert all(a.fluency_cost <= b.fluency_cost and a.success < b.success for a, b in zip(front, front[1:]))
    cheap = search.best(max_fluency_cost=front[1].fluency_cost)
    assert cheap is front[1] and search.best(max_fluency_cost=0.0) in (front[0], None)
    frame = search.to_dataframe()
    assert len(frame) == len(search.candidates) + 1 and frame.front.sum() == len(front)


def test_a_metric_replaces_the_success_and_bad_input_is_refused(smollm2, tiny_gpt2):
    blue = smollm2.tokenizer.encode(" blue")[0]
    by_metric = lw.search_steering(
        smollm2, RED_BLUE, " blue", directions=[], span=BOB, budget=4, metric=lambda logp: logp[blue]
    )
    p = smollm2.trace(RED_BLUE, keep_logits=True).logits[-1].log_softmax(-1)[blue]
    assert math.isclose(by_metric.plain.success, float(p), abs_tol=1e-4) and len(by_metric.candidates) <= 4
    with pytest.raises(lw.InputError, match="the same token"):
        lw.search_steering(tiny_gpt2, "Hello there", " the", " the")
    with pytest.raises(lw.InputError, match="budget must be"):
        lw.search_steering(tiny_gpt2, "Hello there", " the", budget=0)
    with pytest.raises(lw.InputError, match="span \\(1, 40\\) is outside the sequence"):
        lw.search_steering(tiny_gpt2, "Hello there", " the", span=(1, 40))
    with pytest.raises(lw.WrongTypeError, match="metric is a function"):
        lw.search_steering(tiny_gpt2, "Hello there", " the", metric=3)
    with pytest.raises(lw.InputError, match="was made from"):
        lw.search_steering(tiny_gpt2, "Hello there", " the", directions=[lw.Direction(torch.ones(256), model="x")])


def test_the_search_view_installs_a_point_in_a_linked_editor(search, smollm2, tmp_path):
    editor = lw.AttentionEditor(smollm2, RED_BLUE, max_new_tokens=4)
    view = lw.SteeringSearchView(search, editor=editor)
    assert len(view.points) == len(search.candidates) and view.plain == search.plain.success
    assert sum(p["front"] for p in view.points) == len(search.front)
    best = search.candidates.index(search.best())
    reply, _ = view.request({"what": "install", "index": best}, [])  # what the front end sends on a click
    assert reply["type"] == "installed" and view.installed == best and view.status.startswith("installed")
    assert editor.edits == list(search.best().edits) and "".join(editor.new_tokens).startswith(" blue")
    reply, _ = view.request({"what": "install", "index": 10_000}, [])
    assert reply["type"] == "error" and "out of range" in reply["message"] and view.installed == best
    for fmt in ("png", "svg", "html"):
        reply, (data,) = view.request({"what": "export", "format": fmt}, [])
        assert reply["type"] == "file" and len(data) > 1000
    assert view.save(tmp_path / "search.html").read_text().count("<tr>") == len(search.front) + 1
    assert "install" not in lw.SteeringSearchView(search).request({"what": "install", "index": 0}, [])[0]["type"]
    with pytest.raises(lw.WrongTypeError, match="SteeringSearchView takes the result of lw.search_steering"):
        lw.SteeringSearchView(editor)


def test_an_mlp_ablated_at_some_positions_is_what_a_hand_hook_does(arch, lm):
    mlp = anatomy(lm.model, lm.facts.n_layers).mlps[0]
    if mlp is None:  # BERT's feed-forward is two modules (intermediate, output), not one
        with pytest.raises(lw.InputError, match="block 0 has no MLP found"):
            lm.trace(PROMPT, edits=[lw.AblateMLP(0)])
        return
    edited = lm.trace(PROMPT, keep_logits=True, edits=[lw.AblateMLP(0, positions=SPAN)])

    def zero(_module, _args, output):
        out = block_output(output).clone()
        out[:, SPAN[0] : SPAN[1]] = 0
        return (out, *output[1:]) if isinstance(output, tuple) else out

    handle = mlp.register_forward_hook(zero)
    try:
        with torch.no_grad():
            expected = lm.model(torch.tensor([PROMPT])).logits[0]
    finally:
        handle.remove()
    torch.testing.assert_close(edited.logits, expected, atol=1e-5, rtol=0)
    assert (edited.logits - lm.trace(PROMPT, keep_logits=True).logits).abs().max() > 1e-4
    if arch not in MASKED:
        edits = [lw.AblateMLP(1, positions=(15, 18))]
        cached = lm.trace(PROMPT, max_new_tokens=6, edits=edits)
        assert cached.generated_ids == lm.trace(PROMPT, max_new_tokens=6, edits=edits, use_cache=False).generated_ids
        assert lw.replay(cached.record, lm).generated_ids == cached.generated_ids
    with pytest.raises(lw.InputError, match="AblateMLP positions span \\(10, 99\\) is outside"):
        lm.trace(PROMPT, edits=[lw.AblateMLP(0, positions=(10, 99))])
