"""The inference engine: paged latent KV cache, continuous batching, MTP speculative decoding, vLLM-style API."""
from .engine import LLMEngine
from .llm import LLM
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from .paged_cache import BlockPool, PagedLatentCache
from .sampling import SamplingParams
from .voting import best_of_n, extract_answer, majority_vote

__all__ = ["LLM", "LLMEngine", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob", "RequestMetrics",
           "PagedLatentCache", "BlockPool", "majority_vote", "best_of_n", "extract_answer"]
