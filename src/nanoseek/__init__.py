"""nanoseek: DeepSeek-V3 / R1 in plain PyTorch."""
from .config import ModelConfig
from .model import LatentCache, Transformer

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Transformer", "LatentCache", "__version__"]
