"""Sequence classifiers (`*ForSequenceClassification`): a trace gives class probabilities instead
of text, attention as for any model, edits steer the probabilities, attribution scores tokens for
a class. Tiny random Llama and BERT classifiers, three classes."""

from __future__ import annotations

import pytest
import torch
import transformers

import llm_widgets as lw

from .test_trace_architectures import PROMPT, VOCAB, ToyTokenizer

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    id2label=LABELS,
    label2id={v: k for k, v in LABELS.items()},
    pad_token_id=0,
)


def build(arch: str, attn: str | None = None, state: dict | None = None) -> lw.LanguageModel:
    config = (
        transformers.LlamaConfig(**SIZES, num_key_value_heads=2)
        if arch == "llama"
        else transformers.BertConfig(**SIZES)
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(
        config, **({"attn_implementation": attn} if attn else {})
    ).eval()
    if state is not None:
        model.load_state_dict(state)
    return lw.LanguageModel(model, ToyTokenizer(), name=f"tiny-{arch}-classifier")


@pytest.fixture(scope="module", params=["llama", "bert"])
def classifier(request):
    return build(request.param)


def plain_probabilities(lm: lw.LanguageModel) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(lm.model(torch.tensor([PROMPT])).logits[0].float(), -1)


def test_a_trace_gives_class_probabilities(classifier):
    assert classifier.facts.kind == "classifier" and classifier.labels == ["negative", "neutral", "positive"]
    tr = classifier.trace(PROMPT)
    expected = plain_probabilities(classifier)
    assert list(tr.label_probabilities) == classifier.labels
    torch.testing.assert_close(torch.tensor(list(tr.label_probabilities.values())), expected, atol=1e-6, rtol=0)
    assert tr.output_text == LABELS[int(expected.argmax())]
    assert tr.top_k(k=3)[0] == (tr.output_text, pytest.approx(float(expected.max()), abs=1e-6))
    assert tr.probability("positive") == pytest.approx(float(expected[2]), abs=1e-6)
    assert tr.probability(0) == pytest.approx(float(expected[0]), abs=1e-6)


def test_its_attention_equals_eager(classifier):
    arch = "llama" if "llama" in classifier.name else "bert"
    eager = build(arch, "eager", classifier.model.state_dict())
    with torch.no_grad():
        reference = eager.model(torch.tensor([PROMPT]), output_attentions=True).attentions
    tr = classifier.trace(PROMPT)
    for layer in range(2):
        for head in range(4):
            torch.testing.assert_close(tr.attention(layer, head), reference[layer][0, head].float(), atol=1e-5, rtol=0)


def test_edits_steer_the_probabilities(classifier):
    plain = classifier.trace(PROMPT)
    same = classifier.trace(PROMPT, edits=[lw.ScaleAttention(1.0, keys=(0, 8))])
    assert same.label_probabilities == pytest.approx(plain.label_probabilities, abs=1e-6)
    steered = classifier.trace(PROMPT, edits=[lw.ScaleAttention(0.02, keys=(0, 8)), lw.AblateHead(layer=1, head=0)])
    # (a random tiny classifier's pooled output moves little; it moves)
    assert max(abs(steered.label_probabilities[k] - plain.label_probabilities[k]) for k in LABELS.values()) > 1e-5


def test_attribution_for_a_class_equals_autograd(classifier):
    a = classifier.trace(PROMPT).attribute("positive")
    assert a.target == "positive" and a.quantity == "log p('positive')"
    model = classifier.model
    embeds = model.get_input_embeddings()(torch.tensor([PROMPT])).detach().requires_grad_(True)
    with torch.enable_grad():
        logp = torch.log_softmax(model(inputs_embeds=embeds, attention_mask=torch.ones(1, len(PROMPT))).logits[0], -1)
        logp[2].backward()
    expected = (embeds.grad * embeds).sum(-1)[0]
    torch.testing.assert_close(a.scores, expected.detach(), atol=1e-5, rtol=1e-4)
    assert a.p_target == pytest.approx(classifier.trace(PROMPT).label_probabilities["positive"], abs=1e-6)
    view = lw.AttributionView(a)
    assert view.target == "positive" and len(view.scores) == len(PROMPT)
    view.method = "occlusion"  # recomputed for the same class
    assert view.error == "" and view.target == "positive"
    why = classifier.trace(PROMPT).attribute("positive", contrast="negative")
    assert why.contrast == "negative" and why.quantity == "logit('positive') - logit('negative')"


def test_classifiers_refuse_what_they_cannot_do(classifier):
    with pytest.raises(lw.InputError, match="is a classifier: it gives class probabilities"):
        classifier.trace(PROMPT, max_new_tokens=3)
    with pytest.raises(lw.InputError, match="'joyful' is not a class.*negative.*neutral.*positive"):
        classifier.trace(PROMPT).attribute("joyful")
    with pytest.raises(lw.InputError, match="not a class"):
        classifier.trace(PROMPT).probability(7)


def test_the_editor_regenerates_the_class(classifier):
    editor = lw.AttentionEditor(classifier, PROMPT, max_new_tokens=0)
    before = editor.output_text
    assert before in LABELS.values() and editor.target == before
    editor.edits = [lw.ScaleAttention(0.02, keys=(0, 8)), lw.AblateHead(layer=1, head=0)]
    assert editor.p_after != pytest.approx(editor.p_before, abs=1e-6)  # p(the class it chose) moved
    assert editor.unedited_tokens == [before] and editor.new_tokens == [editor.output_text]
    bars = {row["label"]: row for row in editor.class_bars}  # a bar per class, without edits and with them
    assert list(bars) == classifier.labels
    assert bars[before]["before"] == pytest.approx(editor.p_before) and bars[before]["after"] == pytest.approx(
        editor.p_after
    )
    assert editor.output_text == classifier.trace(PROMPT, edits=editor.edits).output_text
    view = lw.AttentionView(classifier.trace(PROMPT))
    assert view.output_text == before


# --- token classification: a class per token ---


@pytest.fixture(scope="module")
def tagger():
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(transformers.BertConfig(**SIZES)).eval()
    return lw.LanguageModel(model, ToyTokenizer(), name="tiny-bert-tagger")


def test_a_token_classifier_labels_each_token(tagger):
    assert tagger.facts.kind == "token_classifier"
    tr = tagger.trace(PROMPT)
    with torch.no_grad():
        probs = torch.softmax(tagger.model(torch.tensor([PROMPT])).logits[0].float(), -1)
    assert [label for _, label, _ in tr.token_labels] == [LABELS[int(i)] for i in probs.argmax(-1)]
    assert [p for _, _, p in tr.token_labels] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-6)
    assert tr.output_text == " ".join(label for _, label, _ in tr.token_labels) and tr.label_probabilities == {}
    assert tr.probability("positive", step=5) == pytest.approx(float(probs[5, 2]), abs=1e-6)
    with pytest.raises(lw.InputError, match="is a classifier.*trace.token_labels"):
        tagger.trace(PROMPT, max_new_tokens=2)


def test_token_attribution_explains_one_token_s_class(tagger):
    a = tagger.trace(PROMPT).attribute("negative", step=5)  # why token 5 is (or is not) "negative"
    model = tagger.model
    embeds = model.get_input_embeddings()(torch.tensor([PROMPT])).detach().requires_grad_(True)
    with torch.enable_grad():
        logp = torch.log_softmax(
            model(inputs_embeds=embeds, attention_mask=torch.ones(1, len(PROMPT))).logits[0, 5], -1
        )
        logp[0].backward()
    torch.testing.assert_close(a.scores, (embeds.grad * embeds).sum(-1)[0].detach(), atol=1e-5, rtol=1e-4)
    assert a.target == "negative" and len(a.scores) == len(PROMPT)
    with pytest.raises(lw.InputError, match="step 14 is out of range"):
        tagger.trace(PROMPT).attribute("negative", step=14)


def test_the_editor_shows_each_token_s_class_before_and_after(tagger):
    editor = lw.AttentionEditor(tagger, PROMPT)
    assert editor.unedited_tokens == [label for _, label, _ in editor.unedited.token_labels]
    editor.edits = [lw.ScaleAttention(0.0, keys=(0, 7)), lw.AblateHead(layer=1, head=0)]
    assert editor.new_tokens == [label for _, label, _ in tagger.trace(PROMPT, edits=editor.edits).token_labels]
    assert editor.class_bars == []
