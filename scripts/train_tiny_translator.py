"""Train the bundled tiny-translator (English to German) from scratch: a byte-level
BPE tokenizer shared by both languages, then a small Marian encoder-decoder, on
short message pairs from the German gettext catalogues that Debian packages ship.

The .deb files are fetched with `apt-get download` and unpacked with `dpkg -x`
into scripts/work/, so nothing is installed on the machine. Only short plain
phrases are kept (no format strings, markup or shortcuts). Fixed seed and step
count, CPU only. Writes config, fp16 safetensors, tokenizer, the loss curve and
training.json into llm_widgets/models/tiny_translator/ (the model card there is
kept by hand and quotes the figures printed at the end). Its translations are
toy quality: the point is cross-attention that aligns words.

    python scripts/train_tiny_translator.py
"""

from __future__ import annotations

import csv
import gettext
import json
import random
import re
import subprocess
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "scripts/work/translator"
OUT = ROOT / "llm_widgets/models/tiny_translator"
PACKAGES = [
    "iso-codes",
    "coreutils",
    "tar",
    "sed",
    "grep",
    "wget",
    "bash",
    "make",
    "dpkg",
    "apt",
    "diffutils",
    "findutils",
    "gzip",
    "libgtk-3-common",
    "libglib2.0-data",
    "xkb-data",
    "libc-l10n",
    "gnupg-l10n",
    "procps",
    "psmisc",
    "man-db",
    "shared-mime-info",
    "binutils-common",
    "gettext",
    "util-linux-locales",
]
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SETTINGS = dict(
    vocab_size=3000,
    d_model=192,
    layers=3,
    heads=4,
    ffn=512,
    max_words=6,
    batch_size=64,
    steps=6000,
    warmup=300,
    lr=1.5e-3,
    valid_fraction=0.03,
    seed=0,
)
PHRASE = re.compile(r"^[A-Za-zÄÖÜäöüß][A-Za-zÄÖÜäöüß' -]*$")


def catalogue_pairs() -> dict[str, str]:
    """English message -> German translation, from every de catalogue of the packages."""
    debs, root = WORK / "debs", WORK / "root"
    debs.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0] for p in debs.glob("*.deb")}
    missing = [p for p in PACKAGES if p not in have]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    pairs: dict[str, str] = {}
    for mo in sorted(root.glob("usr/share/locale/de/LC_MESSAGES/*.mo")):
        with mo.open("rb") as f:
            catalogue = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 (the parsed message table)
        for english, german in sorted(catalogue.items(), key=str):
            if isinstance(english, str) and isinstance(german, str) and _plain(english) and _plain(german):
                pairs.setdefault(english, german)
    return pairs


def _plain(text: str) -> bool:
    return 0 < len(text.split()) <= SETTINGS["max_words"] and bool(PHRASE.match(text))


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SETTINGS["vocab_size"],
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=64
    )


def main() -> None:
    random.seed(SETTINGS["seed"])
    torch.manual_seed(SETTINGS["seed"])
    torch.set_num_threads(2)
    pairs = sorted(catalogue_pairs().items())
    pairs = [(e, g) for e, g in pairs if e != g or random.random() < 0.1]  # mostly names when equal: keep a few
    random.shuffle(pairs)
    n_valid = int(len(pairs) * SETTINGS["valid_fraction"])
    valid, train = pairs[:n_valid], pairs[n_valid:]
    print(f"{len(train)} training pairs, {len(valid)} held out")
    tokenizer = train_tokenizer([e for e, _ in train] + [g for _, g in train])
    config = MarianConfig(
        vocab_size=len(tokenizer),
        d_model=SETTINGS["d_model"],
        encoder_layers=SETTINGS["layers"],
        decoder_layers=SETTINGS["layers"],
        encoder_attention_heads=SETTINGS["heads"],
        decoder_attention_heads=SETTINGS["heads"],
        encoder_ffn_dim=SETTINGS["ffn"],
        decoder_ffn_dim=SETTINGS["ffn"],
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        forced_eos_token_id=1,
        share_encoder_decoder_embeddings=True,
        scale_embedding=True,
        dropout=0.1,
        max_length=32,
        num_beams=1,
    )
    model = MarianMTModel(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=SETTINGS["lr"], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / SETTINGS["warmup"]) * max(0.05, 1 - s / SETTINGS["steps"])
    )

    def batch(rows):
        enc = tokenizer([e for e, _ in rows], padding=True, return_tensors="pt")
        labels = tokenizer([g for _, g in rows], padding=True, return_tensors="pt")["input_ids"]
        labels[labels == 0] = -100
        return enc, labels

    def valid_loss() -> float:
        model.eval()
        with torch.no_grad():
            losses = [
                model(**enc, labels=labels).loss.item()
                for enc, labels in (batch(valid[i : i + 256]) for i in range(0, len(valid), 256))
            ]
        model.train()
        return sum(losses) / len(losses)

    curve, started, order = [], time.time(), []
    model.train()
    for step in range(SETTINGS["steps"]):
        if not order:
            order = list(range(len(train)))
            random.shuffle(order)
        rows = [train[order.pop()] for _ in range(min(SETTINGS["batch_size"], len(order)))]
        enc, labels = batch(rows)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad()
        if step % 250 == 0 or step == SETTINGS["steps"] - 1:
            curve.append((step, loss.item(), valid_loss()))
            print(
                f"step {step}: train {curve[-1][1]:.3f}, valid {curve[-1][2]:.3f}, {time.time() - started:.0f} s",
                flush=True,
            )
    model.eval()
    OUT.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(OUT)
    tokenizer.save_pretrained(OUT)
    with (OUT / "loss_curve.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("step", "train_loss", "valid_loss"), *curve])
    model.float()
    samples = {}
    for english in (
        "File not found",
        "Permission denied",
        "Republic of Austria",
        "Show hidden files",
        "Invalid argument",
        "Kingdom of Spain",
    ):
        ids = tokenizer(english, return_tensors="pt")["input_ids"]
        samples[english] = tokenizer.decode(model.generate(ids, max_new_tokens=16)[0], skip_special_tokens=True)
        print(f"{english!r} -> {samples[english]!r}")
    (OUT / "training.json").write_text(
        json.dumps(
            {
                "settings": SETTINGS,
                "packages": PACKAGES,
                "train_pairs": len(train),
                "valid_pairs": len(valid),
                "final_valid_loss": curve[-1][2],
                "seconds": round(time.time() - started),
                "torch": torch.__version__,
                "samples": samples,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
