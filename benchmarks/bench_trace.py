"""Cost of tracing, as ratios measured side by side in one run.

(a) traced forward, capturing every layer, vs the plain SDPA forward   (target <= 1.05x)
(b) eager with output_attentions=True (what other tools do), same input, for comparison
(c) traced generate with edits on 12 heads vs plain generate           (target <= 1.10x)
(d) first paint of the view: one head's 512 x 512 overview and the layers x heads grid
(e) peak memory above the loaded model, for each

Models: a GPT-2-small-shaped random model (124M) and SmolLM2-135M, at 256 and
1024 tokens (--lengths). Runs alternate and the median of --repeats is kept.
On a GPU: --models llama-7b (Llama-2-7B's shape, random weights, context raised
to 32k) --dtype bfloat16 --lengths 4096 16384 32768. Eager (b) is skipped where
its T x T weights of every layer would not fit.

    .venv/bin/python benchmarks/bench_trace.py [--repeats 3] [--lengths 256 1024] [--new-tokens 20]

The fixed cost on its own (a trace minus the model's forward at 8 tokens; target < 1 ms), and the
Python per layer per decoding step:

    .venv/bin/python benchmarks/bench_trace.py --models tiny-gpt2 smollm2-135m --fixed 300
    .venv/bin/python benchmarks/bench_trace.py --models tiny-gpt2 --decoding --repeats 15 --new-tokens 40
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import threading
import time

import torch
import transformers

import llm_widgets as lw


class PeakMemory:
    """Peak memory above the level at entry: CUDA's allocator stats on a GPU, else RSS sampled at 1 kHz."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.top = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.top = max(self.top, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.top, _rss()) - self.base


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn, device) -> tuple[float, int]:
    if device.type == "cuda":  # each case starts from an empty allocator cache: no case pays for another's blocks
        torch.cuda.empty_cache()
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed, mem.peak


def gpt2_small(device, dtype) -> lw.LanguageModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=2048)  # GPT-2 small's shape: 12 layers, 12 heads, 768 wide
    model = transformers.GPT2LMHeadModel(config).to(device=device, dtype=dtype).eval()
    tokenizer = lw.load_model("tiny-gpt2").tokenizer  # any tokenizer: the inputs below are ids
    return lw.LanguageModel(model, tokenizer, name="gpt2-small-shaped (random)")


def llama_7b(device, dtype) -> lw.LanguageModel:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=34816,
    )  # Llama-2-7B, context raised past 32k
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    tokenizer = lw.load_model("tiny-gpt2").tokenizer  # the inputs are ids; it decodes them
    return lw.LanguageModel(model, tokenizer, name="llama-7b-shaped (random)")


def marian_base(device, dtype) -> lw.LanguageModel:
    torch.manual_seed(0)
    # opus-mt-en-de's shape: 6 + 6 layers, 8 heads, 512 wide (vocabulary cut to the tokenizer's)
    config = transformers.MarianConfig(
        vocab_size=4096,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=4095,
        decoder_start_token_id=0,
    )
    model = transformers.MarianMTModel(config).to(device=device, dtype=dtype).eval()
    tokenizer = lw.load_model("tiny-gpt2").tokenizer
    return lw.LanguageModel(model, tokenizer, name="marian-base-shaped (random)")


def bench_seq2seq(lm: lw.LanguageModel, length: int, repeats: int, new_tokens: int) -> list[str]:
    """An encoder-decoder: the source through the encoder and the decoder's first step, traced vs
    plain; then generation with cross-attention edits on 12 heads vs plain generate."""
    model, device = lm.model, next(lm.model.parameters()).device
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(100, lm.facts.vocab_size - 100, (1, length), generator=g).to(device)
    start = torch.tensor([[model.generation_config.decoder_start_token_id]], device=device)
    cross = lm.trace(ids[0]).stack("cross")
    edits = [
        lw.ScaleAttention(3.0, keys=(0, 8), layers=[layer], heads=[head], stack="cross")
        for layer in range(cross.n_layers)
        for head in (0, cross.n_heads - 1)
    ][:12]

    def plain():
        with torch.no_grad():
            model(input_ids=ids, decoder_input_ids=start, use_cache=False)

    def traced():
        lm.trace(ids[0])

    def generate_plain():
        with torch.no_grad():
            model.generate(input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def generate_edited():
        lm.trace(ids[0], max_new_tokens=new_tokens, min_new_tokens=new_tokens, edits=edits)

    cases = {"plain": plain, "traced": traced, "gen_plain": generate_plain, "gen_edited": generate_edited}
    for fn in cases.values():  # warm-up
        fn()
    t, m = alternate(cases, repeats, device)
    rows = [
        f"| {lm.name} | {length} | (a) traced forward (encoder + first decoder step), encoder, decoder and cross "
        f"attention captured | {t['traced']:.3f} s vs {t['plain']:.3f} s | **{t['traced'] / t['plain']:.2f}x** "
        f"(target <= 1.05x) | {m['traced']:.0f} vs {m['plain']:.0f} MiB |",
        f"| {lm.name} | {length} | (c) generate {new_tokens} tokens, cross-attention edits on 12 heads | "
        f"{t['gen_edited']:.3f} s vs {t['gen_plain']:.3f} s | **{t['gen_edited'] / t['gen_plain']:.2f}x** "
        f"(target <= 1.10x) | {m['gen_edited']:.0f} vs {m['gen_plain']:.0f} MiB |",
    ]
    for row in rows:
        print(row, flush=True)
    return rows


def sdpa_backend(device, dtype) -> str:
    """Which SDPA kernel serves a plain causal call here: the fastest that accepts it."""
    if device.type != "cuda":
        return "math/CPU"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 8, 256, 128, device=device, dtype=dtype)
    for name, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cuDNN", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            return name
        except RuntimeError:
            continue
    return "math"


def alternate(cases: dict, repeats: int, device) -> tuple[dict[str, float], dict[str, float]]:
    """Each case once per round, `repeats` rounds: (median seconds, peak MiB) per case."""
    results = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            results[name].append(measure(fn, device))
    t = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    m = {name: max(r[1] for r in runs) / 2**20 for name, runs in results.items()}
    return t, m


def first_paint(tr: lw.Trace) -> None:
    """What AttentionView's first paint computes: a middle layer's head at 512 x 512 and the grid."""
    tr.attention_overview(tr.n_layers // 2, 0, size=512)
    tr.attention_grid(24)


def plain_generate(lm: lw.LanguageModel, ids: torch.Tensor, new_tokens: int) -> None:
    """Plain greedy `generate` of exactly `new_tokens` tokens: what traced generation is measured against."""
    with torch.no_grad():
        lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.eos_token_id,
        )


def twelve_heads(facts) -> list:
    """12 (layer, head) pairs spread over the model, each emphasising the first 8 keys."""
    pairs = [
        (layer, head)
        for layer in range(0, facts.n_layers, max(1, facts.n_layers // 6))
        for head in (0, facts.n_heads - 1)
    ][:12]
    return [lw.ScaleAttention(3.0, keys=(0, 8), layers=[layer], heads=[head]) for layer, head in pairs]


def bench(lm: lw.LanguageModel, length: int, repeats: int, new_tokens: int) -> list[str]:
    model, device = lm.model, next(lm.model.parameters()).device
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(100, lm.facts.vocab_size - 100, (1, length), generator=g).to(device)
    original = model.config._attn_implementation
    # the trace computes the last position's logits only; so do the baselines (T x vocab logits are GBs)
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def plain():
        with torch.no_grad():
            model(input_ids=ids, use_cache=False, **last)

    traces = []

    def traced():
        traces.append(lm.trace(ids[0]))

    def paint():  # on the trace just made: nothing of it is computed yet
        first_paint(traces.pop())

    def eager():
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False, output_attentions=True, **last)
        finally:
            model.set_attn_implementation(original)

    def generate_plain():
        plain_generate(lm, ids, new_tokens)

    edits = twelve_heads(lm.facts)

    def generate_edited():
        lm.trace(ids[0], max_new_tokens=new_tokens, min_new_tokens=new_tokens, edits=edits)

    cases = {
        "plain": plain,
        "traced": traced,
        "paint": paint,
        "eager": eager,
        "gen_plain": generate_plain,
        "gen_edited": generate_edited,
    }
    eager_bytes = lm.facts.n_layers * lm.facts.n_heads * length * length * model.dtype.itemsize
    if device.type == "cuda" and eager_bytes > torch.cuda.mem_get_info()[0] * 0.8:
        del cases["eager"]
    for fn in cases.values():  # warm-up
        fn()
    t, m = alternate(cases, repeats, device)
    rows = [
        f"| {lm.name} | {length} | (a) traced forward, all layers captured | {t['traced']:.3f} s vs {t['plain']:.3f} s "
        f"| **{t['traced'] / t['plain']:.2f}x** (target <= 1.05x) | {m['traced']:.0f} vs {m['plain']:.0f} MiB |",
        f"| {lm.name} | {length} | (b) eager + output_attentions | "
        + (
            f"{t['eager']:.3f} s vs {t['plain']:.3f} s | {t['eager'] / t['plain']:.2f}x | {m['eager']:.0f} vs "
            f"{m['plain']:.0f} MiB |"
            if "eager" in t
            else f"not run: its weights would need {eager_bytes / 2**30:.0f} GiB | | |"
        ),
        f"| {lm.name} | {length} | (c) generate {new_tokens} tokens, edits on 12 heads | {t['gen_edited']:.3f} s vs "
        f"{t['gen_plain']:.3f} s | **{t['gen_edited'] / t['gen_plain']:.2f}x** (target <= 1.10x) "
        f"| {m['gen_edited']:.0f} vs {m['gen_plain']:.0f} MiB |",
        f"| {lm.name} | {length} | (d) first paint: a head's 512 x 512 overview + the {lm.facts.n_layers} x "
        f"{lm.facts.n_heads} grid; trace + paint vs plain | {t['paint']:.3f} s; {t['traced'] + t['paint']:.3f} s vs "
        f"{t['plain']:.3f} s | **{(t['traced'] + t['paint']) / t['plain']:.2f}x** (target <= 1.10x) "
        f"| {m['paint']:.0f} MiB |",
    ]
    for row in rows:
        print(row, flush=True)
    return rows


def fixed_cost(lm: lw.LanguageModel, runs: int) -> str:
    """A trace minus the model's own forward at 8 tokens: median of `runs` alternating pairs."""
    model, device = lm.model, next(lm.model.parameters()).device
    ids = torch.randint(100, 1000, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    cases = {"plain": lambda: model(input_ids=ids, use_cache=False, **last), "traced": lambda: lm.trace(ids[0])}
    with torch.no_grad():
        for fn in cases.values():
            fn()
        t, _ = alternate(cases, runs, device)
    row = (
        f"| {lm.name} | 8 | fixed cost of a trace (trace minus forward, median of {runs}) | "
        f"{t['traced'] * 1e3:.2f} ms vs {t['plain'] * 1e3:.2f} ms | **{(t['traced'] - t['plain']) * 1e3:.2f} ms** "
        "(target < 1 ms) | |"
    )
    print(row, flush=True)
    return row


def decoding_cost(lm: lw.LanguageModel, repeats: int, new_tokens: int) -> list[str]:
    """Python per layer per generated token: traced generation (plain, and with an edit on one head
    of every layer) minus plain generate of one more token (the trace's extra step runs the last
    token), over layers x steps."""
    device = next(lm.model.parameters()).device
    ids = torch.randint(100, 1000, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)
    n_layers, steps = lm.facts.n_layers, new_tokens + 1
    edits = [lw.ScaleAttention(3.0, keys=(0, 4), layers=[layer], heads=[0]) for layer in range(n_layers)]
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}

    cases = {
        "plain": lambda: plain_generate(lm, ids, steps),
        "traced": lambda: lm.trace(ids[0], **settings),
        "edited": lambda: lm.trace(ids[0], edits=edits, **settings),
    }
    for fn in cases.values():
        fn()
    t, _ = alternate(cases, repeats, device)
    rows = [
        f"| {lm.name} | 8 + {new_tokens} | (c') decoding, {what}: Python per layer per step | "
        f"{t[case]:.3f} s vs {t['plain']:.3f} s | **{(t[case] - t['plain']) / (n_layers * steps) * 1e6:.0f} us** | |"
        for case, what in (("traced", "no edits"), ("edited", "an edit on one head of every layer"))
    ]
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "smollm2-135m"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--fixed", type=int, metavar="RUNS", help="only the fixed cost of a trace, over RUNS pairs")
    parser.add_argument("--decoding", action="store_true", help="only Python per layer per decoding step")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {name}, dtype {dtype}, "
        f"{torch.get_num_threads()} CPU threads, plain SDPA runs the {sdpa_backend(device, dtype)} kernel, "
        f"median of {args.repeats}; memory is the peak above the loaded model\n"
    )
    print("| model | tokens | case | time (ours vs plain) | ratio | peak memory (ours vs plain) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        if name == "gpt2-small":
            lm = gpt2_small(device, dtype)
        elif name == "marian-base":
            lm = marian_base(device, dtype)
        elif name == "llama-7b":
            lm = llama_7b(device, dtype)
        elif os.path.isdir(name) and not os.path.exists(os.path.join(name, "model.safetensors")):
            # a directory with only config.json (and a tokenizer): random weights of that shape
            config = transformers.AutoConfig.from_pretrained(name)
            with torch.device(device):
                model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
            lm = lw.LanguageModel(
                model, transformers.AutoTokenizer.from_pretrained(name), name=config.model_type + " (random)"
            )
        else:
            lm = lw.load_model(name, dtype=dtype, device=device)
        if args.fixed:
            fixed_cost(lm, args.fixed)
        elif args.decoding:
            decoding_cost(lm, args.repeats, args.new_tokens)
        else:
            for length in args.lengths:
                (bench_seq2seq if lm.kind == "seq2seq" else bench)(lm, length, args.repeats, args.new_tokens)
        del lm


if __name__ == "__main__":
    main()
