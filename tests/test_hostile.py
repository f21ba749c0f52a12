"""What a hostile (or careless) user can hand us: shared run records, exports of
tokens that are markup or control characters, settings of the wrong type. Each
gets a clear error naming what was wrong, and nothing runs that should not."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

import llm_widgets as lw
from llm_widgets.export import attention as attention_export
from llm_widgets.export import attribution as attribution_export

PAYLOADS = [
    "</script><script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "]]>",
    "</style>",
    "a\x01b",
    "x\x00y",
    "&amp;",
    "\"'><svg onload=alert(1)>",
    "\u202eRTL",
    "\ud800",
]


@pytest.fixture(scope="module")
def trace(tiny_gpt2):
    return tiny_gpt2.trace("It is a truth universally acknowledged", max_new_tokens=4)


# --- records never run code ---


def test_a_crafted_record_runs_no_code(tiny_gpt2, trace, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "custom_generate").mkdir()
    (tmp_path / "custom_generate" / "generate.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
        "def generate(*a, **k):\n    raise SystemExit\n"
    )
    record = copy.deepcopy(trace.record)
    record["generation"].update(custom_generate=str(tmp_path), trust_remote_code=True)
    with pytest.raises(ValueError, match="'custom_generate' is refused"):
        lw.replay(record, tiny_gpt2)
    with pytest.raises(ValueError, match="'custom_generate' is refused"):
        tiny_gpt2.trace("Hi", max_new_tokens=2, custom_generate=str(tmp_path), trust_remote_code=True)
    record = copy.deepcopy(trace.record)
    record["generation"]["frobnicate"] = 1
    with pytest.raises(ValueError, match="unknown generation setting 'frobnicate'"):
        lw.replay(record, tiny_gpt2)
    record = copy.deepcopy(trace.record)
    record["payload"] = "x"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['payload'\]"):
        lw.replay(record, tiny_gpt2)
    assert not marker.exists()


def test_records_are_checked_before_anything_runs(tiny_gpt2, trace):
    good = trace.record
    assert good["schema"] == 1
    assert lw.replay(json.loads(json.dumps(good)), tiny_gpt2).generated_ids == trace.generated_ids
    cases = {
        "model": (lambda r: r.pop("model"), "the key 'model' is missing"),
        "schema": (lambda r: r.update(schema=99), "schema 99 is not one this version reads"),
        "version": (lambda r: r.update(llm_widgets="999.0"), "newer than this one"),
        "ids as text": (lambda r: r.update(prompt_ids="It is"), "'prompt_ids' must be a list of token ids"),
        "bool ids": (lambda r: r.update(prompt_ids=[True, 2]), "'prompt_ids' must be a list of token ids"),
        "temperature": (lambda r: r["generation"].update(temperature="hot"), "temperature must be a number"),
        "edits": (
            lambda r: r.update(edits=[{"kind": "scale_attention", "factor": 2.0, "keys": [0, 2], "x": 1}]),
            r"unknown field\(s\) \['x'\]",
        ),
    }
    for spoil, message in cases.values():
        record = copy.deepcopy(good)
        spoil(record)
        with pytest.raises(ValueError, match=message):
            lw.replay(record, tiny_gpt2)
    with pytest.raises(ValueError, match="not a run record"):
        lw.replay({"prompt_ids": [1, 2]}, tiny_gpt2)
    other = copy.deepcopy(good)
    other["model"]["architecture"] = "LlamaForCausalLM"
    with pytest.raises(ValueError, match="this record is of a LlamaForCausalLM"):
        lw.replay(other, tiny_gpt2)


def test_beam_search_and_several_sequences_are_refused_up_front(tiny_gpt2):
    with pytest.raises(ValueError, match="num_beams=3: beam search is not traced"):
        tiny_gpt2.trace("Hi", max_new_tokens=3, num_beams=3)
    with pytest.raises(ValueError, match="num_return_sequences=3: several returned sequences is not traced"):
        tiny_gpt2.trace("Hi", max_new_tokens=3, num_return_sequences=3)


# --- exports: valid XML, nothing injected, whatever the tokens are ---


def _check_svg(svg: str) -> None:
    root = ET.fromstring(svg)  # raises on invalid XML (control characters, unescaped markup)
    tags = {element.tag.rsplit("}", 1)[-1] for element in root.iter()}
    assert not tags & {"script", "img", "foreignObject"}, tags  # (matplotlib writes a <style> of its own)
    attributes = " ".join(" ".join(e.attrib) for e in root.iter())
    assert "onerror" not in attributes and "onload" not in attributes


def test_exports_of_hostile_tokens_are_valid_and_inert(trace):
    hostile = copy.copy(trace)
    hostile.tokens = [PAYLOADS[i % len(PAYLOADS)] for i in range(len(trace))]
    for zoom in ({}, {"queries": (2, 8), "keys": (0, 6)}):
        fig = attention_export.attention_figure(hostile, 1, 2, query=3, **zoom)
        _check_svg(attention_export.to_svg(fig))
        page = attention_export.to_html(fig)
        assert "<script>alert" not in page and "<img src=x" not in page and "\x01" not in page.split("<script")[0]
        assert attention_export.to_png(fig)[:4] == b"\x89PNG"
    attribution = trace.attribute()
    attribution.tokens = [PAYLOADS[i % len(PAYLOADS)] for i in range(len(attribution.tokens))]
    _check_svg(attribution_export.to_svg(attribution))
    page = attribution_export.to_html(attribution)
    assert "<script>alert" not in page and "<img src=x" not in page


def test_matrix_and_profile_exports_of_hostile_text_are_valid(trace):
    from llm_widgets.export import matrix as matrix_export
    from llm_widgets.export import profile as profile_export

    fig = matrix_export.MatrixFigure(
        title=PAYLOADS[0],
        values=np.zeros((2, len(PAYLOADS))),
        row_labels=PAYLOADS[:2],
        column_labels=PAYLOADS,
        words=[PAYLOADS, PAYLOADS[::-1]],
        notes=PAYLOADS[:3],
    )
    _check_svg(matrix_export.to_svg(fig))
    page = matrix_export.to_html(fig)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert matrix_export.to_png(fig)[:4] == b"\x89PNG"
    hostile = copy.copy(trace.profile())
    hostile.model_name = PAYLOADS[1]
    hostile.modules = [dict(m, module=PAYLOADS[i % len(PAYLOADS)] + m["module"]) for i, m in enumerate(hostile.modules)]
    _check_svg(profile_export.render(hostile, "svg").decode())
    page = profile_export.render(hostile, "html").decode()
    assert "<img src=x" not in page and "<script>alert" not in page


def test_monitor_exports_take_any_group_name(tiny_gpt2, tmp_path):
    model = copy.deepcopy(tiny_gpt2.model).train().requires_grad_(True)
    groups = {"$x^{$": r"transformer\.h\.0\..*", "a\x01b </svg>": r"transformer\.h\.1\..*", "rest": ".*"}
    monitor = lw.GradientMonitor(model, groups=groups)
    batch = torch.randint(0, 4096, (2, 12))
    for _ in range(2):
        model(input_ids=batch, labels=batch).loss.backward()
        monitor.step(loss=1.0)
        model.zero_grad()
    view = lw.GradientMonitorView(monitor)
    _check_svg(view.render("svg").decode())
    assert view.render("png")[:4] == b"\x89PNG"
    monitor.detach()


# --- arguments: refused, never dropped or coerced ---


def test_load_model_passes_on_or_refuses_every_argument(tiny_gpt2):
    eager = lw.load_model("tiny-gpt2", attn_implementation="eager")
    assert eager.facts.attn_implementation == "eager"
    with pytest.raises(ValueError, match="revision, frobnicate do\\(es\\) not apply to the bundled model"):
        lw.load_model("tiny-gpt2", revision="does-not-exist", frobnicate=1)
    with pytest.raises(ValueError, match="trust_remote_code do\\(es\\) not apply"):
        lw.load_model("tiny-gpt2", trust_remote_code=True)
    with pytest.raises(TypeError, match="load_model takes a bundled name"):
        lw.load_model(3)


def test_local_weights_are_checked_and_errors_name_the_file(tiny_gpt2, tmp_path):
    folder = tmp_path / "model"
    tiny_gpt2.model.save_pretrained(folder)
    tiny_gpt2.tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    from llm_widgets.models.loading import _sha256

    (folder / "manifest.json").write_text(
        json.dumps({"files": {"model.safetensors": {"size": weights.stat().st_size, "sha256": _sha256(weights)}}})
    )
    assert lw.load_model(folder).facts.n_layers == 4
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors does not match its size and sha256"):
        lw.load_model(folder)
    (folder / "manifest.json").unlink()
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ValueError, match=r"cannot load the weights of .*model\.safetensors"):
        lw.load_model(folder)
    remote = tmp_path / "remote"
    remote.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    config["model_type"] = "x-remote"
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has a config.json that AutoConfig cannot load"):
        lw.load_model(remote)


def test_no_silent_coercions(tiny_gpt2, trace):
    ids = trace.input_ids[:5]
    with pytest.raises(ValueError, match="token ids must be integers; got a torch.float32 tensor"):
        tiny_gpt2.trace(ids.float())
    with pytest.raises(
        ValueError,
        match=r"one sequence, shape \[T\] or \[1, T\] \(or a batch, \[B, T\]\); got "
        r"shape \[1, 2, 5\]",
    ):
        tiny_gpt2.trace(torch.stack([ids, ids])[None])
    assert len(tiny_gpt2.trace(torch.stack([ids, ids]))) == 2  # [B, T]: a batch
    assert tiny_gpt2.trace(ids[None]).input_ids.tolist() == ids.tolist()  # a batch of one is fine
    with pytest.raises(ValueError, match="prompt must be a string"):
        tiny_gpt2.trace([True, False])
    with pytest.raises(ValueError, match="max_new_tokens must be an integer"):
        tiny_gpt2.trace("Hi", max_new_tokens=True)
    with pytest.raises(ValueError, match="seed must be an integer"):
        tiny_gpt2.trace("Hi", seed=float("nan"))
    with pytest.raises(ValueError, match="layer True is out of range"):
        trace.attention(True, 0)
    with pytest.raises(ValueError, match="ScaleAttention needs keys"):
        lw.ScaleAttention(2.0, keys=None)
    with pytest.raises(ValueError, match="keys must be a position"):
        lw.ScaleAttention(2.0, keys="0-4")


def test_monitor_validates_before_it_changes_anything(tiny_gpt2):
    model = copy.deepcopy(tiny_gpt2.model).train().requires_grad_(True)
    monitor = lw.GradientMonitor(model)
    monitor.steer(".*", scale=0.5)
    batch = torch.randint(0, 4096, (2, 12))
    model(input_ids=batch, labels=batch).loss.backward()
    before = [p.grad.clone() for p in monitor.params]
    with pytest.raises(ValueError, match="lr must be a finite number"):
        monitor.step(lr="fast")
    with pytest.raises(ValueError, match="loss must be a number or a tensor"):
        monitor.step(loss="low")
    assert monitor.step_count == 0 and all(torch.equal(a, p.grad) for a, p in zip(before, monitor.params))
    monitor.step(loss=1.0)  # the retry steers once
    assert all(torch.allclose(0.5 * a, p.grad) for a, p in zip(before, monitor.params))
    with pytest.raises(ValueError, match=r"pattern '\(\[' is not a valid regular expression"):
        monitor.steer("([", scale=0.5)
    monitor.detach()


EXOTIC = ["\n", "\t", " 😀", "漢字", "e\u0301", "↵⇥", "\u200b", "ﷺ", "𝕏", "\x01"]


def test_png_exports_draw_every_character_they_are_given(trace, monkeypatch):
    """No missing-glyph boxes: each text a PNG export draws is covered by the font it is drawn with
    (DejaVu Sans, an installed font that covers more, or the character's escape)."""
    import warnings

    from PIL import ImageDraw

    from llm_widgets.export import fonts
    from llm_widgets.export import matrix as matrix_export
    from llm_widgets.export import profile as profile_export

    drawn: list[tuple[str, str]] = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, shown, *args, font=None, **kwargs):
        drawn.append((getattr(font, "path", ""), shown))
        return original(self, xy, shown, *args, font=font, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    exotic = copy.copy(trace)
    exotic.tokens = [EXOTIC[i % len(EXOTIC)] for i in range(len(trace))]
    attention_export.to_png(attention_export.attention_figure(exotic, 1, 2, query=3))
    attribution = trace.attribute()
    attribution.tokens = [EXOTIC[i % len(EXOTIC)] for i in range(len(attribution.tokens))]
    attribution_export.to_png(attribution)
    fig = matrix_export.MatrixFigure(
        title="漢字 😀",
        values=np.zeros((2, len(EXOTIC))),
        row_labels=EXOTIC[:2],
        column_labels=EXOTIC,
        words=[EXOTIC, EXOTIC[::-1]],
        notes=EXOTIC[:3],
    )
    matrix_export.to_png(fig)
    assert drawn and all(path for path, _ in drawn)
    for path, shown in drawn:
        lacking = [c for c in shown if c != "\n" and ord(c) not in fonts.coverage(path)]
        assert not lacking, (path, shown, lacking)
    texts = " ".join(shown for _, shown in drawn)
    assert "😀" in texts and "\u0301" in texts and "↵" in texts  # what DejaVu Sans has is drawn as itself
    assert "漢" in texts or "\\u6f22" in texts  # an installed CJK font draws it, or its escape stands in
    # matplotlib's figures: their labels are escaped where DejaVu Sans has no glyph, so it never warns
    profile = copy.copy(trace.profile())
    profile.modules = [dict(m, module=EXOTIC[i % len(EXOTIC)] + m["module"]) for i, m in enumerate(profile.modules)]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing from font")
        assert profile_export.render(profile, "png")[:4] == b"\x89PNG"
