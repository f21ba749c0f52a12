"""Inputs found to break things (issue 26's list), each answered clearly now."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import llm_widgets as lw

from .test_classifiers import SIZES
from .test_trace_architectures import PROMPT as TOY_PROMPT
from .test_trace_architectures import ToyTokenizer

PROMPT = "It is a truth universally acknowledged"


def _batch() -> dict:
    ids = torch.tensor([[1, 2, 3, 4]])
    return {"input_ids": ids, "labels": ids}


def _sgd(lm) -> torch.optim.Optimizer:
    return torch.optim.SGD(lm.model.parameters(), lr=0.0)  # lr 0: the shared model stays as it was


def _classifier(labels: dict[int, str]) -> lw.LanguageModel:
    sizes = {**SIZES, "id2label": labels, "label2id": {}}
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**sizes, num_key_value_heads=2))
    return lw.LanguageModel(model.eval(), ToyTokenizer(), name="tiny-classifier")


def test_a_chrome_trace_stays_json_whatever_the_module_names(tiny_gpt2, tmp_path):
    """torch writes range names into its Chrome trace unescaped (and turns backslashes into slashes)."""
    lm = lw.load_model("tiny-gpt2")
    odd = 'a"b\\c\ud800,"x":1'

    class Wrap(torch.nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.parts = torch.nn.ModuleDict({odd: mlp})

        def forward(self, x):
            return self.parts[odd](x)

    block = lm.model.transformer.h[0]
    block.mlp = Wrap(block.mlp)
    p = lw.profile(lm, PROMPT, repeats=1)
    trace = json.loads(p.save_chrome_trace(tmp_path / "t.json").read_text())
    assert "x" not in trace  # nothing injected
    assert f"transformer.h.0.mlp.parts.{odd}" in {r["module"] for r in p.modules}
    assert any(r["module"].endswith(odd) and r["peak_bytes"] >= 0 for r in p.modules)


def test_lone_surrogates_and_terminal_escapes(tiny_gpt2):
    with pytest.raises(lw.InputError, match="lone surrogate"):
        tiny_gpt2.trace("It is \ud800 a truth")
    clf = _classifier({0: "neg\ud800", 1: "neutral\x1b[31m", 2: "positive"})
    assert clf.labels == ["neg\\ud800", "neutral\\x1b[31m", "positive"]
    editor = lw.AttentionEditor(clf, TOY_PROMPT)
    json.dumps(editor.get_state(), ensure_ascii=False).encode("utf-8")  # what the kernel sends: encodable
    text = editor._repr_mimebundle_()[0]["text/plain"]
    assert "\x1b" not in text and "\ud800" not in text


def test_classes_that_share_a_name_keep_their_own(tiny_gpt2):
    clf = _classifier({0: "pos", 1: "neg", 2: "pos"})
    tr = clf.trace(TOY_PROMPT)
    assert list(tr.label_probabilities) == ["pos (0)", "neg", "pos (2)"]
    assert sum(tr.label_probabilities.values()) == pytest.approx(1.0)
    assert tr.attribute("pos (2)").target_id == 2
    with pytest.raises(lw.InputError, match="names 2 classes"):
        tr.attribute("pos")


def test_records_keep_no_local_path(tmp_path):
    lm = lw.load_model("tiny-gpt2")
    lm.model.save_pretrained(tmp_path / "mine")
    lm.tokenizer.save_pretrained(tmp_path / "mine")
    local = lw.load_model(str(tmp_path / "mine"))
    record = local.trace(PROMPT, max_new_tokens=2).record
    assert str(tmp_path) not in json.dumps(record)
    assert record["model"]["name"] == "mine" and record["model"]["source"] == {"folder": "mine"}
    with pytest.raises(lw.InputError, match="pass it, lw.replay"):
        lw.replay(record)
    assert lw.replay(record, local).generated_ids == record["output_ids"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lm: lm.trace(PROMPT, seed=2**64), "seed must be an integer >= 0 and <= 18446744073709551615"),
        (lambda lm: lm.trace([1, 2**63]), "token ids must be between"),
        (lambda lm: lm.trace([1, 2**70]), "token ids must be between"),
        (lambda lm: lm.trace(PROMPT, max_new_tokens=2, do_sample=True, temperature=1e-300), "temperature"),
        (lambda lm: lm.trace(PROMPT, keep_logits="yes"), "keep_logits must be True or False"),
        (lambda lm: lm.trace(PROMPT).attribute(method="integrated_gradients", n_steps=10**6), "n_steps"),
        (lambda lm: lm.trace(PROMPT).attribute(n_steps=8), "n_steps is integrated gradients' setting"),
        (lambda lm: lm.trace(PROMPT).attribute(baseline="eos"), "baseline is the reference"),
        (lambda lm: lw.ablation_sweep(lm.trace(PROMPT), budget_bytes=0), "budget_bytes must be an integer >= 1"),
        (lambda lm: lw.ablation_sweep(lm.trace(PROMPT), layers="no"), "layers must be True or False"),
        (lambda lm: lw.patch(lm, PROMPT, PROMPT, " the", per_position=True), "per_position splits heads"),
        (lambda lm: lw.scaling(lm, lengths=[16], implementations="nope"), "unknown attention implementation"),
        (lambda lm: lw.scaling(lm, lengths=[16], repeats=0), "repeats must be an integer >= 1"),
        (lambda lm: lw.AttentionEditor(lm, [PROMPT, PROMPT]), "AttentionEditor takes one prompt"),
    ],
)
def test_bad_input_is_named(tiny_gpt2, call, message):
    with pytest.raises(lw.LLMWidgetsError, match=message):
        call(tiny_gpt2)


def test_a_single_length_and_implementation_are_taken(tiny_gpt2):
    s = lw.scaling(tiny_gpt2, lengths=16, implementations="eager", repeats=1, memory=False)
    assert {r["length"] for r in s.rows} == {16} and {r["implementation"] for r in s.rows} == {"eager"}


def test_a_sweep_reads_as_a_summary(tiny_gpt2):
    text = repr(lw.ablation_sweep(tiny_gpt2.trace(PROMPT), progress=False))
    assert text.startswith("Patching(ablation") and "tensor" not in text and len(text) < 300


def test_an_interrupted_monitor_step_is_undone_and_a_retry_counts_once(tiny_gpt2, monkeypatch):
    import copy

    from llm_widgets.training import monitor as monitor_module

    model = copy.deepcopy(tiny_gpt2.model).train()
    ids = torch.tensor([tiny_gpt2.tokenizer(PROMPT)["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    monitor = lw.GradientMonitor(model, every=1, histograms_every=1)
    monitor.steer("layer 1", scale=0.5)
    before = [p.grad.clone() for p in model.parameters()]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(monitor_module.GradientMonitor, "_histograms", interrupted)
    with pytest.raises(KeyboardInterrupt):
        monitor.step(loss=1.0)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))  # not half steered
    assert monitor.step_count == 0 and monitor.steps == [] and monitor.rows == []
    monkeypatch.undo()
    monitor.step(loss=1.0)
    steered = [n for n, p in model.named_parameters() if ".h.1." in n]
    by_name = dict(zip([n for n, _ in model.named_parameters()], before))
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, by_name[name] * 0.5 if name in steered else by_name[name]), name
    assert monitor.step_count == 1 and [s["step"] for s in monitor.steps] == [1]
    monitor.detach()


def test_a_model_on_the_meta_device_is_refused_with_what_to_do(tiny_gpt2):
    config = transformers.GPT2Config.from_dict(tiny_gpt2.model.config.to_dict())
    with torch.device("meta"):
        empty = transformers.GPT2LMHeadModel(config)
    lm = lw.LanguageModel(empty, tiny_gpt2.tokenizer)
    for call in (
        lambda: lm.trace(PROMPT),
        lambda: lw.profile(lm, PROMPT, repeats=1),
        lambda: lw.patch(lm, PROMPT, PROMPT, " the", progress=False),
        lambda: lw.AttentionEditor(lm, PROMPT),
    ):
        with pytest.raises(lw.InputError, match="meta device"):
            call()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attribution_of_a_half_precision_model_on_the_cpu(dtype):
    full = lw.load_model("tiny-gpt2")
    half = lw.load_model("tiny-gpt2")
    half.model.to(dtype)
    for method, settings in (("grad_x_input", {}), ("integrated_gradients", {"n_steps": 16}), ("occlusion", {})):
        want = full.trace(PROMPT).attribute(method=method, **settings)
        got = half.trace(PROMPT).attribute(method=method, **settings)
        assert got.scores.dtype == torch.float32
        torch.testing.assert_close(got.scores, want.scores, atol=0.1, rtol=0.1)


def test_replay_says_which_model_and_refuses_a_sampled_run_without_its_seed(tiny_gpt2):
    record = tiny_gpt2.trace(PROMPT, max_new_tokens=4).record
    other = lw.load_model("tiny-gpt2")
    torch.manual_seed(1)
    for p in other.model.parameters():
        p.data.add_(torch.randn_like(p) * 0.5)
    other.name = "my-fine-tune"
    with pytest.raises(lw.ReplayMismatchError, match="the record is of 'tiny-gpt2', this model is 'my-fine-tune'"):
        lw.replay(record, other)
    sampled = tiny_gpt2.trace(PROMPT, max_new_tokens=2, do_sample=True).record
    sampled["generation"]["seed"] = None
    with pytest.raises(lw.InputError, match="sampled run .* without its 'seed'"):
        lw.replay(sampled, tiny_gpt2)


def test_load_model_says_what_is_wrong_with_a_folder(tmp_path):
    tiny = lw.load_model("tiny-gpt2")
    folder = tmp_path / "more-layers"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layer": config["n_layer"] + 2}))
    with pytest.raises(lw.InputError, match="do not fill the model its config describes"):
        lw.load_model(str(folder))
    import pickle

    pickled = tmp_path / "pickled"
    tiny.tokenizer.save_pretrained(pickled)
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps({"x": print}))  # code a pickle would run
    with pytest.raises(lw.InputError, match="cannot load the weights"):
        lw.load_model(str(pickled))
    if not torch.cuda.is_available():
        with pytest.raises(lw.InputError, match="no CUDA device"):
            lw.load_model("tiny-gpt2", device="cuda")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lm: lm.trace(PROMPT, edits="keys 0 to 3"), "edits must be a list"),
        (lambda lm: lm.trace(PROMPT, capture_device="banana"), "capture_device must be a torch device"),
        (lambda lm: lm.trace(PROMPT, capture_device="meta"), "keeps no values"),
        (lambda lm: lw.LanguageModel(lm.model, "gpt2"), "tokenizer must be a tokenizer object"),
        (lambda lm: lw.GradientMonitor(lm.model, optimizer="sgd"), "optimizer must be a torch.optim.Optimizer"),
        (lambda lm: lw.GradientMonitorView("x"), "GradientMonitorView takes a GradientMonitor"),
        (lambda lm: lm.trace(PROMPT).logit_lens(positions="first"), "positions must be an integer or a list"),
        (lambda lm: lw.profile_step(lm, [1, 2], _sgd(lm)), "batch must be a dict of the model's inputs"),
        (lambda lm: lw.profile_step(lm, _batch(), "adam"), "optimizer must be a torch.optim.Optimizer"),
        (lambda lm: lw.profile_step(lm, _batch(), _sgd(lm), monitor="m"), "monitor must be an lw.GradientMonitor"),
        (lambda lm: lw.profile_step(lm, _batch(), _sgd(lm), loss="mean"), "loss must be a function"),
        (
            lambda lm: lw.profile_step(torch.nn.Linear(2, 1), {"image": 1}, _sgd(lm)),
            r"does not take this batch \['image'\]: .*unexpected keyword",
        ),
        (lambda lm: lw.profile_step(lm, {"input_ids": _batch()["input_ids"]}, _sgd(lm)), "returned no loss"),
        (lambda lm: lw.profile_step(lm, _batch(), _sgd(lm), loss=lambda o: o.logits), "one number.*shape \\[1, 4, "),
        (lambda lm: lw.profile_step(lm, _batch(), _sgd(lm), loss=lambda o: 1.0), "one number.*got float"),
    ],
)
def test_more_bad_input_is_named(tiny_gpt2, call, message):
    with pytest.raises(lw.LLMWidgetsError, match=message):
        call(tiny_gpt2)


def test_edits_as_none_or_one_edit_and_every_lens_position(tiny_gpt2):
    assert tiny_gpt2.trace(PROMPT, edits=None).edits == ()
    one = lw.ScaleAttention(2.0, keys=(0, 2))
    assert tiny_gpt2.trace(PROMPT, edits=one).edits == (one,)
    tr = tiny_gpt2.trace(PROMPT)
    assert tr.logit_lens(positions="all").positions == tr.logit_lens().positions


def test_what_would_be_ignored_is_refused(tiny_gpt2):
    with pytest.raises(lw.InputError, match="temperature shapes sampling, and this run is greedy"):
        tiny_gpt2.trace(PROMPT, max_new_tokens=2, temperature=0.7)
    tr = tiny_gpt2.trace(PROMPT)
    with pytest.raises(lw.WrongTypeError, match="view must be an lw.AttentionView"):
        lw.PatchingView(lw.ablation_sweep(tr, progress=False), view="x")
    with pytest.raises(lw.WrongTypeError, match="view must be an lw.AttentionView"):
        lw.AttributionView(tr.attribute(), view=lw.ModelCard(tiny_gpt2))


def test_out_of_range_selections_and_malformed_inputs_are_named(tiny_gpt2):
    import traitlets

    editor = lw.AttentionEditor(tiny_gpt2, PROMPT, max_new_tokens=2)
    with pytest.raises(traitlets.TraitError, match="key_span must be"):
        editor.key_span = [3, 999]
    with pytest.raises(traitlets.TraitError, match="picked heads must be"):
        editor.picked = [[0, 99]]
    editor.key_span, editor.picked = [0, 2], [[1, 3]]  # in range: taken
    lens = lw.LensView(tiny_gpt2.trace(PROMPT))
    with pytest.raises(traitlets.TraitError, match="selected must be"):
        lens.selected = [99, 0]
    record = tiny_gpt2.trace(PROMPT).record
    record["model"]["code"] = "x"
    with pytest.raises(lw.InputError, match=r"unknown key\(s\) \['code'\] in 'model'"):
        lw.replay(record, tiny_gpt2)
    with pytest.raises(lw.InputError, match="without whitespace"):
        lw.VocabTokenizer(["a", "b c"])
    with pytest.raises(lw.InputError, match="is not a regular expression"):
        lw.GradientMonitor(tiny_gpt2.model, groups={"bad": "("})
    with pytest.raises(lw.InputError, match="both strings"):
        lw.GradientMonitor(tiny_gpt2.model, groups={"layer": 3})


def test_patching_reads_exact_zeros_and_ones_and_shows_small_effects(tiny_gpt2):
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    result = lw.patch(tiny_gpt2, clean, corrupted, " Mary", " John", site="residual", progress=False)
    # positions before the swapped name hold the same values in both runs: patching them is nothing
    swapped = next(i for i, (a, b) in enumerate(zip(result.tokens, result.clean_tokens, strict=True)) if a != b)
    assert swapped > 0 and (result.effect[:, :swapped] == 0).all()
    assert not torch.signbit(result.effect[:, :swapped]).any()  # 0, not -0.0
    assert result.effect[-1, -1] == 1.0  # the last layer's last position is the clean answer
    from llm_widgets.export.matrix import cell_text

    assert [cell_text(v) for v in (0.0, -0.0, -1.2e-7, 0.004, 1.0, 0.9134, 123.0)] == [
        "0",
        "0",
        "-1.2e-7",
        "4.0e-3",
        "1.0",
        "0.91",
        "1.2e+2",
    ]  # as js/lib/matrix.ts cellText writes them
    small = result.effect[result.effect.abs().lt(0.01) & result.effect.ne(0)]
    figure = lw.PatchingView(result).figure()
    words = _cell_words(figure)
    assert small.numel() > 0 and cell_text(float(small[0])) in words  # a small effect is not "0"
    assert words.count("0") == int((figure.values == 0).sum())


def _cell_words(figure):
    from llm_widgets.export.matrix import _cell_word

    rows, cols = figure.values.shape
    return [_cell_word(figure, r, c) for r in range(rows) for c in range(cols)]


def test_a_word_list_shorter_than_the_models_output_is_named():
    from .test_plain_torch import VOCAB, EncoderLM

    torch.manual_seed(0)
    lm = lw.LanguageModel(EncoderLM().eval(), lw.VocabTokenizer(VOCAB[:10]), name="short-list")
    with pytest.raises(lw.InputError, match="predicts 40 tokens but its vocabulary has 10: give lw.VocabTokenizer"):
        lm.trace("w1 w2 w3", max_new_tokens=2)
    with pytest.raises(lw.InputError, match="id 12 is not in this vocabulary of 10 tokens"):
        lm.tokenizer.decode([1, 12])
