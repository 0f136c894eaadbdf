"""nanoseek: DeepSeek-V3 / R1 in plain PyTorch."""
from .checkpoint import load_pretrained, save_pretrained
from .config import ModelConfig
from .infer import (LLM, CompletionOutput, RequestOutput, SamplingParams, best_of_n, extract_answer,
                    majority_vote)
from .model import LatentCache, Transformer
from .reasoning import ReasoningParser
from .tokenizer import Tokenizer, train_tokenizer

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Transformer", "LatentCache", "Tokenizer", "train_tokenizer", "ReasoningParser",
           "load_pretrained", "save_pretrained", "LLM", "SamplingParams", "RequestOutput", "CompletionOutput",
           "majority_vote", "best_of_n", "extract_answer", "__version__"]
