"""nanoseek: DeepSeek-V3 / R1 in plain PyTorch."""
from .checkpoint import load_pretrained, save_pretrained
from .config import ModelConfig
from .model import LatentCache, Transformer
from .reasoning import ReasoningParser
from .tokenizer import Tokenizer, train_tokenizer

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Transformer", "LatentCache", "Tokenizer", "train_tokenizer", "ReasoningParser",
           "load_pretrained", "save_pretrained", "__version__"]
