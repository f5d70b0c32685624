"""Corpus preparation: read, clean, split, tokenize, and store nested token subsets."""

from scalelab.data.documents import Doc, SourceConfig
from scalelab.data.pipeline import PrepareConfig, prepare
from scalelab.data.split import SplitConfig
from scalelab.data.store import TokenSplit, TokenStore
from scalelab.data.tokenizer import Tokenizer, TokenizerConfig

__all__ = ["Doc", "PrepareConfig", "SourceConfig", "SplitConfig", "TokenSplit", "TokenStore", "Tokenizer",
           "TokenizerConfig", "prepare"]
