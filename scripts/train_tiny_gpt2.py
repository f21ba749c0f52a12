"""Train the bundled tiny-gpt2 from scratch: byte-level BPE tokenizer, then a
small GPT-2, on the corpus that scripts/build_corpus.py writes.

Fixed seed and step count, CPU only, so a rerun on the same torch build gives
the same weights. Writes config, fp16 safetensors, tokenizer files and the
loss curve into llm_widgets/models/tiny_gpt2/ (the model card there is kept
by hand and quotes the figures printed at the end).

    python scripts/build_corpus.py && python scripts/train_tiny_gpt2.py
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "scripts/work/corpus"
OUT = ROOT / "llm_widgets/models/tiny_gpt2"
EOS = "<|endoftext|>"

SETTINGS = dict(
    vocab_size=4096,
    n_positions=512,
    n_embd=256,
    n_layer=4,
    n_head=8,
    seq_len=128,
    batch_size=16,
    steps=1500,
    warmup=100,
    lr=2e-3,
    weight_decay=0.1,
    eval_every=100,
    eval_batches=10,
    seed=0,
)


def train_tokenizer(text_file: Path, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(text_file)], trainer)
    # transformers 5: build the fast tokenizer from the object, not from files
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        model_max_length=SETTINGS["n_positions"],
    )


def encode(tokenizer: PreTrainedTokenizerFast, path: Path) -> torch.Tensor:
    paras = [p + "\n\n" for p in path.read_text(encoding="utf-8").split("\n\n")]
    encodings = tokenizer.backend_tokenizer.encode_batch(paras)  # no length warning per paragraph
    return torch.tensor([i for e in encodings for i in e.ids], dtype=torch.long)


def batches(data: torch.Tensor, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - seq_len - 1, (n,), generator=generator)
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, valid: torch.Tensor, s: dict) -> float:
    model.eval()
    g = torch.Generator().manual_seed(1234)  # the same validation batches every time
    losses = [
        model(input_ids=(x := batches(valid, s["batch_size"], s["seq_len"], g)), labels=x).loss.item()
        for _ in range(s["eval_batches"])
    ]
    model.train()
    return sum(losses) / len(losses)


def plot_loss_curve(csv_path: Path, svg_path: Path) -> None:
    """A dependency-free SVG of train (every step, smoothed) and validation loss."""
    rows = list(csv.DictReader(open(csv_path)))
    steps = [int(r["step"]) for r in rows]
    train = [float(r["train_loss"]) for r in rows]
    smooth, acc = [], train[0]
    for value in train:  # exponential moving average, as training dashboards show it
        acc = 0.95 * acc + 0.05 * value
        smooth.append(acc)
    valid = [(int(r["step"]), float(r["valid_loss"])) for r in rows if r["valid_loss"]]
    w, h, pad = 640, 320, 48
    lo, hi = 3.0, max(train[:5] + [8.5])
    x = lambda step: pad + (w - 2 * pad) * step / steps[-1]  # noqa: E731
    y = lambda loss: h - pad - (h - 2 * pad) * (min(loss, hi) - lo) / (hi - lo)  # noqa: E731
    line = lambda pts: " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in pts)  # noqa: E731
    ticks = "".join(
        f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>'
        f'<line x1="{pad}" x2="{w - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
        for v in range(int(lo), int(hi) + 1)
    )
    svg = f"""<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>{ticks}
<polyline fill="none" stroke="#9ecae1" stroke-width="1" points="{line(zip(steps, train))}"/>
<polyline fill="none" stroke="#08519c" stroke-width="2" points="{line(zip(steps, smooth))}"/>
<polyline fill="none" stroke="#d94801" stroke-width="2" stroke-dasharray="6 3" points="{line(valid)}"/>
<text x="{w / 2}" y="{h - 12}" text-anchor="middle">step (batch of {SETTINGS["batch_size"]} x \
{SETTINGS["seq_len"]} tokens)</text>
<text x="{pad}" y="20">tiny-gpt2 loss (nats/token): train (light), smoothed (dark), validation (dashed)</text>
</svg>
"""
    svg_path.write_text(svg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=SETTINGS["steps"])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--plot-only", action="store_true", help="redraw loss_curve.svg from loss_curve.csv")
    args = parser.parse_args()
    if args.plot_only:
        plot_loss_curve(args.out / "loss_curve.csv", args.out / "loss_curve.svg")
        return
    s = dict(SETTINGS, steps=args.steps)
    torch.manual_seed(s["seed"])
    torch.set_num_threads(max(1, torch.get_num_threads()))

    tokenizer = train_tokenizer(CORPUS / "train.txt", s["vocab_size"])
    train, valid = encode(tokenizer, CORPUS / "train.txt"), encode(tokenizer, CORPUS / "valid.txt")
    print(f"train tokens {len(train):,}  valid tokens {len(valid):,}")

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=s["n_positions"],
        n_embd=s["n_embd"],
        n_layer=s["n_layer"],
        n_head=s["n_head"],
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    print(f"parameters {model.num_parameters():,}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"], betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < s["warmup"]:
            return s["lr"] * (step + 1) / s["warmup"]
        progress = (step - s["warmup"]) / max(1, s["steps"] - s["warmup"])
        return s["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    g = torch.Generator().manual_seed(s["seed"])
    curve, start = [], time.time()
    model.train()
    for step in range(s["steps"]):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x = batches(train, s["batch_size"], s["seq_len"], g)
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        row = {"step": step + 1, "train_loss": round(loss.item(), 4), "valid_loss": ""}
        if (step + 1) % s["eval_every"] == 0 or step + 1 == s["steps"]:
            row["valid_loss"] = round(evaluate(model, valid, s), 4)
            print(
                f"step {step + 1:5d}  train {row['train_loss']:.3f}  valid {row['valid_loss']:.3f}  "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
        curve.append(row)

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.half().save_pretrained(args.out)  # fp16 on disk keeps the package small
    tokenizer.save_pretrained(args.out)
    with open(args.out / "loss_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train_loss", "valid_loss"])
        writer.writeheader()
        writer.writerows(curve)
    plot_loss_curve(args.out / "loss_curve.csv", args.out / "loss_curve.svg")
    summary = {
        "settings": s,
        "parameters": model.num_parameters(),
        "train_tokens": len(train),
        "valid_tokens": len(valid),
        "final_valid_loss": curve[-1]["valid_loss"],
        "seconds": round(time.time() - start),
        "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
