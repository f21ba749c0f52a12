"""Models: load a Hugging Face language model with its tokenizer and facts."""

from .language_model import LanguageModel, ModelFacts
from .loading import BUNDLED_MODELS, cache_dir, load_model
from .plain import VocabTokenizer

__all__ = ["BUNDLED_MODELS", "LanguageModel", "ModelFacts", "VocabTokenizer", "cache_dir", "load_model"]
