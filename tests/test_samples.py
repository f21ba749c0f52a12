"""lw.sample_tree: n answers decoded together, each replaying alone exactly from its record, merged
into a prefix tree whose counts are the answers'; force continues a prefix from the kept cache as
a run from scratch does; the scorer's outcomes and each branch point's decisiveness."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch

import llm_widgets as lw

from .test_seq2seq import CONFIGS as SEQ2SEQ
from .test_seq2seq import SOURCE
from .test_seq2seq import build as build_seq2seq
from .test_trace_architectures import CONFIGS, MASKED, PROMPT, build

TEXT = "It is a truth universally acknowledged, that a single man"
CAUSAL = sorted(set(CONFIGS) - MASKED)


@pytest.fixture(scope="module")
def tree(tiny_gpt2):
    return lw.sample_tree(tiny_gpt2, TEXT, n=12, max_new_tokens=6, seed=7, top_k=20, scorer=_first_word)


def _first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""


def _continuation_logits(lm, ids: list[int], start: int) -> torch.Tensor:
    """The model's own logits for every token from `start` on, one plain forward."""
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0, start - 1 : len(ids) - 1].float()


def test_a_drawn_seed_leaves_torchs_generator_alone(tiny_gpt2):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tree = lw.sample_tree(tiny_gpt2, TEXT, n=2, max_new_tokens=2)  # no seed: one is drawn and recorded
    assert torch.equal(torch.rand(3), expected) and tree.records[1]["generation"]["seed"] >= 0


def test_counts_are_the_answers(tree):
    assert tree.nodes[0].count == 12 == len(tree.samples) and sum(tree.outcomes.values()) == 12
    for node in tree.nodes:
        ending = sum(1 for i in node.samples if len(tree.generated[i]) == node.depth)
        assert node.count == ending + sum(tree.nodes[c].count for c in node.children)
    answers = Counter(tuple(ids) for ids in tree.generated)
    for leaf in tree.leaves():
        path = tuple(n.token_id for n in tree.path(leaf.samples[0])[1:])
        assert leaf.count == answers[path]
    frame = tree.to_dataframe()
    assert len(frame) == len(tree.nodes) and frame["count"].iloc[0] == 12


def test_each_answer_replays_alone_exactly(tree, tiny_gpt2):
    for i in (0, 5, 11):
        trace = tree.samples[i]  # lw.replay of its record: raises if the tokens differ
        assert trace.generated_ids == tree.generated[i] and trace.record["generation"]["seed"] == 7 + i
        alone = tiny_gpt2.trace(TEXT, max_new_tokens=6, do_sample=True, seed=7 + i, top_k=20, capture=False)
        assert alone.generated_ids == tree.generated[i]
    # the probabilities on the tree are the model's, as a plain forward gives them
    ids = tree.prompt_ids + tree.generated[3]
    probs = torch.softmax(_continuation_logits(tiny_gpt2, ids, len(tree.prompt_ids)), -1)
    for j, node in enumerate(tree.path(3)[1:]):
        assert node.prob == pytest.approx(float(probs[j, node.token_id]), abs=1e-5)


def test_force_continues_from_the_kept_cache_as_a_run_from_scratch(tree, tiny_gpt2):
    node = tree.branch_points()[0]
    taken = {tree.nodes[c].token_id for c in node.children}
    token = next(t for t, _, _ in node.alternatives if t not in taken)
    index = tree.force(node, token)
    assert tree.is_forced[index] and tree.nodes[0].count == 12 and tree.nodes[0].forced == 1
    prefix = [n.token_id for n in tree.path(index)[1 : node.depth + 1]]
    forced = tree.generated[index]
    assert forced[: node.depth + 1] == prefix + [token]
    scratch = tiny_gpt2.trace(tree.prompt_ids + prefix + [token], max_new_tokens=6 - node.depth - 1, capture=False)
    assert scratch.generated_ids == forced[node.depth + 1 :] == tree.samples[index].generated_ids
    ids = tree.prompt_ids + forced
    probs = torch.softmax(_continuation_logits(tiny_gpt2, ids, len(tree.prompt_ids)), -1)
    for j, step in enumerate(tree.path(index)[node.depth + 1 :], start=node.depth):
        assert step.prob == pytest.approx(float(probs[j, step.token_id]), abs=1e-5)


def test_outcomes_and_decisiveness(tree):
    for node in tree.nodes:
        assert sum(node.outcomes.values()) == node.count

    def entropy(outcomes: list) -> float:
        counts = Counter(outcomes)
        return -sum(c / len(outcomes) * math.log2(c / len(outcomes)) for c in counts.values())

    # by hand: the outcome's entropy less what is left once the first token is known
    outcomes = [_first_word(text) for text in tree.texts[:12]]
    by_first: dict[int, list] = {}
    for ids, outcome in zip(tree.generated[:12], outcomes):
        by_first.setdefault(ids[0], []).append(outcome)
    expected = entropy(outcomes) - sum(len(o) / 12 * entropy(o) for o in by_first.values())
    assert tree.nodes[0].decisiveness == pytest.approx(expected) and tree.branch_points()[0] is tree.nodes[0]
    assert all(n.decisiveness >= -1e-12 for n in tree.branch_points())


def test_commitment_names_a_layer_for_the_models_own_choices(tiny_gpt2):
    greedy = lw.sample_tree(tiny_gpt2, TEXT, n=2, max_new_tokens=4, seed=0, top_k=1)  # top_k=1: greedy
    assert greedy.generated[0] == greedy.generated[1] and len(greedy.leaves()) == 1
    commitment = greedy.commitment(0)
    assert [t for t, _ in commitment] == [tiny_gpt2.tokenizer.decode([t]) for t in greedy.generated[0]]
    assert all(layer is not None and 0 <= layer < tiny_gpt2.facts.n_layers for _, layer in commitment)
    lens = greedy.samples[0].logit_lens(k=1)
    n = len(greedy.prompt_ids)
    for j, (_, layer) in enumerate(commitment):
        column = lens.top_ids[:, n - 1 + j, 0].tolist()
        assert all(t == greedy.generated[0][j] for t in column[layer:])
        assert layer == 0 or column[layer - 1] != greedy.generated[0][j]


@pytest.mark.parametrize("arch", CAUSAL)
def test_sampled_answers_replay_and_force_on_each_architecture(arch):
    lm = build(arch)
    tree = lw.sample_tree(lm, PROMPT, n=4, max_new_tokens=5, seed=1)
    assert tree.nodes[0].count == 4
    for i in range(4):
        assert tree.samples[i].generated_ids == tree.generated[i]
    node = tree.nodes[tree.path(0)[2].id]  # two tokens in
    index = tree.force(node, 3)
    forced = tree.generated[index]
    scratch = lm.trace(PROMPT + forced[:3], max_new_tokens=2, capture=False)
    assert scratch.generated_ids == forced[3:]
    probs = torch.softmax(_continuation_logits(lm, PROMPT + forced, len(PROMPT)), -1)
    for j, step in enumerate(tree.path(index)[3:], start=2):
        assert step.prob == pytest.approx(float(probs[j, step.token_id]), abs=1e-5)


def test_bad_input_is_named(tiny_gpt2):
    with pytest.raises(lw.InputError, match="n must be an integer"):
        lw.sample_tree(tiny_gpt2, TEXT, n=0)
    for bad in (0, 1e-4):  # (below 0.001 a trace, and so a replay of the answer's record, refuses it)
        with pytest.raises(lw.InputError, match="temperature must be a number above 0"):
            lw.sample_tree(tiny_gpt2, TEXT, temperature=bad)
    for bad in (0, 1.5):
        with pytest.raises(lw.InputError, match=r"top_p must be in \(0, 1\]"):
            lw.sample_tree(tiny_gpt2, TEXT, top_p=bad)
    with pytest.raises(lw.InputError, match="beam search"):
        lw.sample_tree(tiny_gpt2, TEXT, num_beams=4)
    with pytest.raises(lw.InputError, match="raised ZeroDivisionError: division by zero on answer 1 "):
        divisors = iter([1, 0, 2])
        lw.sample_tree(tiny_gpt2, TEXT, n=3, max_new_tokens=2, seed=0, scorer=lambda text: 1 / next(divisors))
    with pytest.raises(lw.WrongTypeError, match="sample_tree takes an lw.LanguageModel"):
        lw.sample_tree("gpt2", TEXT)


def test_determinism_again_in_a_batch_eager_and_float32(tiny_gpt2):
    d = lw.determinism(tiny_gpt2, TEXT, 6)
    rows = {row["setting"]: row for row in d.rows}
    assert set(rows) == {"again", "in a batch", "eager"} and "float32: no other dtype" in d.notes[0]
    assert rows["again"]["identical_logits"] and rows["in a batch"]["same_tokens"]
    assert rows["eager"]["same_tokens"] and 0 <= rows["eager"]["max_logit_difference"] < 1e-4
    assert d.tokens == tiny_gpt2.trace(TEXT, max_new_tokens=6, capture=False).generated_ids
    assert list(d.to_dataframe().columns) == [
        "setting",
        "same_tokens",
        "first_difference",
        "max_logit_difference",
        "identical_logits",
    ]
    half = lw.LanguageModel(copy.deepcopy(tiny_gpt2.model).bfloat16(), tiny_gpt2.tokenizer, name="bf16")
    h = lw.determinism(half, TEXT, 6, do_sample=True, seed=3)
    wide = next(row for row in h.rows if row["setting"] == "float32")
    assert wide["max_logit_difference"] > 0 and "one random generator" in h.notes[0]
    assert "sdpa, bfloat16 vs again" in repr(h)
    with pytest.raises(lw.InputError, match="give seed="):
        lw.determinism(tiny_gpt2, TEXT, do_sample=True)
    with pytest.raises(lw.InputError, match="other_prompt must be some text"):
        lw.determinism(tiny_gpt2, TEXT, other_prompt="")


def test_the_view_lays_out_selects_forces_opens_and_exports(tiny_gpt2):
    tree = lw.sample_tree(tiny_gpt2, TEXT, n=6, max_new_tokens=4, seed=2, scorer=_first_word)
    attention = lw.AttentionView(tiny_gpt2.trace(TEXT))
    view = lw.SampleTreeView(tree, view=attention)
    boxes = view.segments
    assert boxes[0]["column"] == 0 and boxes[0]["y0"] == 0 and boxes[0]["y1"] == 1
    leaves = [b for b in boxes if b["leaf"]]
    assert sum(b["count"] for b in leaves) == 6 and all(b["outcome"] for b in leaves)
    assert sum(b["y1"] - b["y0"] for b in leaves) == pytest.approx(1.0)
    for b in boxes:  # each box ends at the node whose text it ends with
        assert b["text"].endswith(tree.nodes[b["node"]].token)
    split = tree.branch_points()[0]
    view.selected = split.id
    assert view.detail[0].startswith(f"after {split.depth} tokens" if split.depth else "after the prompt")
    assert len(view.alternatives) == 5
    assert view.answers == split.samples
    free = next(a for a in view.alternatives if not a["taken"])
    reply, _ = view.request({"what": "force", "node": split.id, "token": free["token_id"]}, [])
    assert reply == {"type": "forced", "answer": 6} and len(view.segments) == len(boxes) + 1
    assert tree.is_forced[6] and view.selected == split.id
    view.request({"what": "open", "answer": 6}, [])
    assert attention.tokens[-1] == tiny_gpt2.tokenizer.decode([tree.generated[6][-1]])
    for fmt, start in (("svg", b"<?xml"), ("png", b"\x89PNG"), ("html", b"<!doctype html>")):
        assert view.request({"what": "export", "format": fmt}, [])[1][0].startswith(start)
    view.colour_by = "decisiveness"
    assert view.request({"what": "frobnicate"}, [])[0]["type"] == "error"
    assert "no attention view" in lw.SampleTreeView(tree).request({"what": "open", "answer": 0}, [])[0]["message"]
    with pytest.raises(lw.WrongTypeError, match="SampleTreeView takes the result of lw.sample_tree"):
        lw.SampleTreeView(tiny_gpt2)


def test_a_branch_forced_from_code_appears_in_the_view(tiny_gpt2):
    tree = lw.sample_tree(tiny_gpt2, TEXT, n=3, max_new_tokens=3, seed=4)
    view = lw.SampleTreeView(tree)
    before = len(view.segments)
    tree.force(0, tree.nodes[0].alternatives[-1][0])
    assert len(view.segments) == before + 1 and "1 forced" not in view.title
    assert sum(b["forced"] for b in view.segments if b["leaf"]) == 1


def test_an_encoder_decoders_answers_replay_alone():
    translator = lw.load_model("tiny-translator")
    tree = lw.sample_tree(translator, "the house is small", n=4, max_new_tokens=6, seed=5)
    assert tree.lead == [translator.model.generation_config.decoder_start_token_id]
    for i in range(4):
        assert tree.samples[i].generated_ids == tree.generated[i]
        alone = translator.trace("the house is small", max_new_tokens=6, do_sample=True, seed=5 + i, capture=False)
        assert alone.generated_ids == tree.generated[i]
    assert tree.nodes[0].count == 4 and "the house is small" in tree.nodes[0].token  # the source


@pytest.mark.parametrize("arch", sorted(SEQ2SEQ))
def test_an_encoder_decoders_forced_branch_is_a_run_from_scratch(arch):
    lm = build_seq2seq(arch)
    tree = lw.sample_tree(lm, SOURCE, n=4, max_new_tokens=5, seed=1)
    for i in range(4):
        assert tree.samples[i].generated_ids == tree.generated[i]
    index = tree.force(tree.path(0)[2], 3)  # two tokens in
    forced = tree.generated[index]
    assert tree.records[index]["generation"]["decoder_prompt_ids"] == forced[:3]
    scratch = lm.trace(SOURCE, max_new_tokens=2, decoder_prompt_ids=forced[:3], capture=False)
    assert scratch.generated_ids == forced[3:] == tree.samples[index].generated_ids
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([SOURCE]), decoder_input_ids=torch.tensor([tree.lead + forced])).logits
    probs = torch.softmax(logits[0].float(), -1)
    for j, step in enumerate(tree.path(index)[1:]):
        assert step.prob == pytest.approx(float(probs[j, step.token_id]), abs=1e-5)
    sampled = tree.force(0, 4, do_sample=True, seed=3)
    assert tree.samples[sampled].generated_ids == tree.generated[sampled][1:]
