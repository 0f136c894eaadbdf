from .attention import MLA
from .cache import LatentCache
from .layers import MLP, RMSNorm
from .moe import Experts, Gate, MoE
from .transformer import MTP, Block, Transformer

__all__ = ["MLA", "LatentCache", "MLP", "RMSNorm", "Experts", "Gate", "MoE", "MTP", "Block", "Transformer"]
