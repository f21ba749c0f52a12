"""Docs that cannot drift from the code: the README's Python blocks run, in order, as a reader
pastes them (on the bundled models), and every file and name ARCHITECTURE.md cites exists."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest
import torch

import llm_widgets as lw

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)

# What a reader brings that a README block only names: their own model, data, optimizer, trainer,
# classifier. Made here small, each before the first block that uses it.
BRINGS = {
    "my_module": """
words = ["<eos>", "the", "cat", "sat", "on", "mat", "a", "dog"]
class _TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(len(words), 16)
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(16, len(words))
    def forward(self, ids):
        mask = torch.nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.head(self.blocks(self.embed(ids), mask=mask, is_causal=True))
my_module = _TinyLM().eval()
""",
    "lw.profile_step(net, batch, optimizer)": """
net = model.model
batch = {"input_ids": torch.randint(0, 1000, (1, 16)), "labels": torch.randint(0, 1000, (1, 16))}
optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
""",
    "for batch in data:": """
data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 1000, (2, 1, 16))]
import transformers
trainer = transformers.Trainer(model=model.model, args=transformers.TrainingArguments(
    output_dir=str(TMP / "trainer"), report_to=[], use_cpu=True))
""",
    "incident = monitor.incidents[-1]": """
m.detach()
monitor = lw.GradientMonitor(net, vanishing=0, exploding=1e-12, warn=False)  # a reader's run: every step alerts
loss = net(**data[0]).loss
loss.backward()
monitor.step(loss=loss)
net.zero_grad()
""",
}
# Paths the README names as placeholders for the reader's own files
PLACES = {'"path/to/sentiment-model"': "SENTIMENT_MODEL"}


def _readme_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def _sentiment_model(directory: Path) -> str:
    """A small GPT-2 sequence classifier saved as a user's fine-tuned one would be (random weights)."""
    import transformers

    tiny = lw.load_model("tiny-gpt2")
    config = transformers.GPT2Config.from_dict(tiny.model.config.to_dict())
    config.update(
        {
            "num_labels": 2,
            "id2label": {0: "negative", 1: "positive"},
            "label2id": {"negative": 0, "positive": 1},
            "pad_token_id": tiny.pad_token_id,
        }
    )
    transformers.GPT2ForSequenceClassification(config).save_pretrained(directory)
    tiny.tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.mark.slow
def test_the_readme_python_blocks_run_as_pasted(tmp_path, monkeypatch):
    blocks = _readme_blocks()
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)  # files the blocks save ("run.json") land here
    namespace = {"TMP": tmp_path, "torch": torch, "SENTIMENT_MODEL": _sentiment_model(tmp_path / "sentiment")}
    brought = set()
    for i, block in enumerate(blocks):
        for marker, setup in BRINGS.items():
            if marker in block and marker not in brought:
                exec(compile(setup, f"<setup for README block {i + 1}>", "exec"), namespace)
                brought.add(marker)
        for placeholder, name in PLACES.items():
            block = block.replace(placeholder, name)
        # the README's figures: scaling over lengths a CPU test can afford
        block = block.replace("lengths=[256, 512, 1024, 2048]", "lengths=[16, 32]")
        try:
            exec(compile(block, f"<README block {i + 1}>", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"README block {i + 1} failed:\n{block}") from error
    assert brought == set(BRINGS), f"the README no longer uses {set(BRINGS) - brought}: drop them here"


# --- ARCHITECTURE.md ---

# names the text uses for objects of these classes
INSTANCES = {
    "trace": "Trace",
    "tr": "Trace",
    "model": "LanguageModel",
    "monitor": "GradientMonitor",
    "editor": "AttentionEditor",
    "view": "AttentionView",
}


def _cited(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _file_exists(name: str) -> bool:
    """A path from the repository, the package or js/; a bare file name (in a row of the layer
    table, under its folder) anywhere in the package or the front end."""
    if any((base / name).exists() for base in (ROOT, ROOT / "llm_widgets", ROOT / "js")):
        return True
    return "/" not in name and any(True for base in ("llm_widgets", "js") for _ in (ROOT / base).rglob(name))


def _classes() -> dict[str, type]:
    found = {}
    for path in (ROOT / "llm_widgets").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                found.setdefault(node.name, (module, node.name))
    return {name: getattr(importlib.import_module(module), attr) for name, (module, attr) in found.items()}


def _has(owner: object, attribute: str) -> bool:
    """A class attribute, or an instance attribute its source assigns (self.name = ... / name: ...)."""
    if hasattr(owner, attribute):
        return True
    if inspect.isclass(owner):
        source = "".join(inspect.getsource(c) for c in owner.__mro__ if c.__module__.startswith("llm_widgets"))
        return re.search(rf"self\.{attribute}\b\s*[:=]|^\s+{attribute}\s*[:=]", source, re.M) is not None
    return False


def test_architecture_cites_files_and_names_that_exist():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    classes = _classes()
    missing = []
    for cited in _cited(text):
        name = cited.split("(")[0].strip()
        if re.fullmatch(r"[\w./-]+\.(py|ts|md|css)|[\w-]+/([\w./-]+/)?", name):  # a file or folder
            if not _file_exists(name):
                missing.append(cited)
            continue
        parts = name.split(".")
        if not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+", name):
            continue
        root = {"lw": lw, "llm_widgets": lw}.get(parts[0]) or classes.get(INSTANCES.get(parts[0], parts[0]))
        if root is None:
            continue  # not one of ours (torch.profiler, ...)
        owner: object = root
        for part in parts[1:]:
            if not _has(owner, part):
                missing.append(cited)
                break
            owner = getattr(owner, part, None)
            if owner is None:
                break
    assert missing == [], f"ARCHITECTURE.md cites what does not exist: {missing}"


def _pictures_script():
    spec = importlib.util.spec_from_file_location("pictures", ROOT / "scripts" / "pictures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_pictures_are_screenshots_the_browser_tests_take():
    """`make pictures` copies them from test-artifacts/: each must be a screenshot a browser test takes."""
    pictures = _pictures_script()
    browser = "\n".join(p.read_text() for p in (ROOT / "tests" / "browser").glob("test_*.py"))
    for name in pictures.pictures():
        assert (ROOT / "docs" / "images" / f"{name}.png").exists(), name
        taken = f'"{name}.png"' in browser or f'shot(front_end, "{name.removeprefix("notebook7_")}")' in browser
        assert taken, f"no browser test takes {name}.png"
        assert name in pictures.PICTURE_VIEWS, f"say which view {name}.png shows (scripts/pictures.py)"


def test_the_readme_pictures_were_taken_of_their_views_as_they_are():
    """A view's front end changed after its picture was taken: run `make pictures`, and look at them."""
    pictures = _pictures_script()
    manifest = json.loads(pictures.MANIFEST.read_text())
    stale = [
        f"{name}.png was taken before js/{pictures.PICTURE_VIEWS[name]} last changed"
        for name in pictures.pictures()
        if manifest.get(name, {}).get("sources") != pictures.source_hash(pictures.PICTURE_VIEWS[name])
    ]
    assert stale == [], stale
