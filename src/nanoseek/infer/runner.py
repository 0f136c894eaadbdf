"""Runs the model over one step's packed tokens with attention over the paged latent cache.

All tokens of the step (decodes, draft verifications, prefill chunks of several sequences) are packed in one row
(1, N) so that every projection, router and expert runs once per step over all of them. The model's own forward
(`Transformer.forward_hidden`, `Transformer.mtp_step`) runs them; only attention differs, through the model's
`AttentionCache` protocol: `PagedAttention` writes the step's latents into the paged cache and gives each sequence
attention over its own context:
- decode-like sequences (a few new tokens each: decoding, or verifying MTP drafts) form one padded batch over their
  cache blocks (one index_select of whole blocks) on MLA's absorbed path (`MLA.absorbed`);
- prefill chunks use the decompressed path (`MLA.decompressed`, per-head K/V from the latents, SDPA), over the
  chunk alone when nothing is cached before it, else over the gathered context; `prefill_attention="absorbed"`
  runs them on the absorbed path instead (the test that both agree uses it).
`build_meta` turns the step's segments into the index tensors these need, once per step for every layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .paged_cache import PagedLatentCache


@dataclass
class Segment:
    """Rows [row, row + n) of the packed step belong to one sequence, at positions start .. start + n − 1."""
    row: int
    n: int
    start: int
    blocks: list[int]
    decode: bool


@dataclass
class AttnMeta:
    slots: torch.Tensor  # (N,) where each new row is written
    # decode group
    dec_rows: torch.Tensor | None = None  # (B, S) packed row of each query (padding repeats a real row)
    dec_valid: torch.Tensor | None = None  # (B, S)
    dec_blocks: torch.Tensor | None = None  # (B, nb) block table: context positions 0 .. nb · block_size − 1
    dec_mask: torch.Tensor | None = None  # (B, S, T) True = may attend
    # prefill chunks: (row, n, (block table (1, nb), first and end position of the context) or None when the
    # chunk is the whole context)
    prefill: list[tuple[int, int, tuple[torch.Tensor, int, int] | None]] | None = None
    dec_only: bool = False  # all rows are decode queries, S per sequence, in order: views instead of gathers
    # fresh prefills (nothing cached before the chunk) of several sequences, padded into one batch
    fresh_rows: torch.Tensor | None = None  # (G, L) packed rows (padding repeats a real row)
    fresh_valid: torch.Tensor | None = None  # (G, L)
    fresh_mask: torch.Tensor | None = None  # (G, L, L) causal within each sequence's own rows


def build_meta(segments: list[Segment], block_size: int, device: torch.device, ctx_start: int = 0) -> AttnMeta:
    """ctx_start: first position a layer attends to (1 for MTP layers, which have no row at position 0).
    Index arithmetic is done on Python ints and a handful of batched tensor ops, not per token."""
    bs = block_size
    slots = [s.blocks[p // bs] * bs + p % bs for s in segments for p in range(s.start, s.start + s.n)]
    meta = AttnMeta(slots=torch.tensor(slots, dtype=torch.long, device=device))
    dec = [s for s in segments if s.decode]
    if dec:
        S = max(s.n for s in dec)
        nb = -(-max(s.start + s.n for s in dec) // bs)
        # blocks a sequence does not have yet read block 0: masked like every position past its length
        table = torch.tensor([s.blocks[:nb] + [0] * (nb - len(s.blocks[:nb])) for s in dec], dtype=torch.long)
        info = torch.tensor([[s.row, s.start, s.n] for s in dec], dtype=torch.long)
        row0, starts, lens = info[:, 0:1], info[:, 1:2], info[:, 2:3]
        j = torch.arange(S)[None]
        jj = torch.minimum(j, lens - 1)  # padding queries repeat the last real one
        qpos = starts + jj  # (B, S)
        cols = torch.arange(nb * bs)[None]
        mask = (cols[:, None] <= qpos[..., None]) & (cols[:, None] >= ctx_start)
        meta.dec_rows, meta.dec_valid = (row0 + jj).to(device), (j < lens).to(device)
        meta.dec_blocks, meta.dec_mask = table.to(device), mask.to(device)
        meta.dec_only = len(dec) == len(segments) and all(s.row == i * S and s.n == S for i, s in enumerate(dec))
    pre = [s for s in segments if not s.decode]
    fresh = [s for s in pre if s.start <= ctx_start]
    L = max((s.n for s in fresh), default=0)
    if len(fresh) > 1 and len(fresh) * L <= 2 * sum(s.n for s in fresh):  # one padded call, if it wastes little
        info = torch.tensor([[s.row, s.n] for s in fresh], dtype=torch.long)
        j = torch.arange(L)[None]
        lens = info[:, 1:2]
        cols = torch.arange(L)[None, None]
        meta.fresh_rows = (info[:, 0:1] + torch.minimum(j, lens - 1)).to(device)
        meta.fresh_valid = (j < lens).to(device)
        meta.fresh_mask = ((cols <= j[..., None]) & (cols < lens[..., None])).to(device)
        pre = [s for s in pre if s.start > ctx_start]
    if pre:
        meta.prefill = []
        for s in pre:
            if s.start <= ctx_start:
                meta.prefill.append((s.row, s.n, None))
            else:
                end = s.start + s.n
                table = torch.tensor([s.blocks[:-(-end // bs)]], dtype=torch.long, device=device)
                meta.prefill.append((s.row, s.n, (table, ctx_start, end)))
    return meta


class PagedAttention:
    """The model's `AttentionCache` over the paged latent cache for one step's packed rows (b = 1, N rows)."""

    def __init__(self, cache: PagedLatentCache, meta: AttnMeta, prefill_attention: str = "decompressed"):
        self.cache, self.meta, self.prefill_attention = cache, meta, prefill_attention

    def attend(self, attn: nn.Module, q_nope: torch.Tensor, q_pe: torch.Tensor, c: torch.Tensor, k_pe: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """q_nope (1,N,h,d), q_pe (1,N,h,r), this step's c (1,N,C), k_pe (1,N,R) -> (1,N,h,d_v). `mask` is unused:
        each sequence's context comes from the step's metadata."""
        meta, layer = self.meta, attn.layer_id
        q_nope, q_pe, c, k_pe = q_nope[0], q_pe[0], c[0], k_pe[0]
        self.cache.write(layer, meta.slots, c, k_pe)
        if meta.dec_only:  # decoding (or verifying) S tokens per sequence: queries b·S .. b·S + S − 1
            kv = self.cache.gather_rows(layer, meta.dec_blocks)
            B, S = meta.dec_mask.shape[:2]
            o = attn.absorbed(q_nope.view(B, S, *q_nope.shape[1:]), q_pe.view(B, S, *q_pe.shape[1:]), kv,
                              meta.dec_mask)
            return o.reshape(1, B * S, *o.shape[2:])
        out = q_nope.new_empty(q_nope.shape[0], attn.n_heads, attn.v_head_dim)
        if meta.dec_rows is not None:
            kv = self.cache.gather_rows(layer, meta.dec_blocks)
            o = attn.absorbed(q_nope[meta.dec_rows], q_pe[meta.dec_rows], kv, meta.dec_mask)
            out[meta.dec_rows[meta.dec_valid]] = o[meta.dec_valid].to(out.dtype)
        if self.prefill_attention == "absorbed":
            def attend(qn, qp, cc, pe, m):  # noqa: ANN001, ANN202 (the decompressed path's signature)
                return attn.absorbed(qn, qp, torch.cat([cc, pe], dim=-1), m)
        else:
            attend = attn.decompressed
        if meta.fresh_rows is not None:
            r, valid = meta.fresh_rows, meta.fresh_valid
            o = attend(q_nope[r], q_pe[r], c[r].to(q_nope.dtype), k_pe[r].to(q_nope.dtype), meta.fresh_mask)
            out[r[valid]] = o[valid].to(out.dtype)
        for row, n, ctx in meta.prefill or ():
            qn, qp = q_nope[None, row:row + n], q_pe[None, row:row + n]
            if ctx is None:
                cc, pe, m = c[None, row:row + n], k_pe[None, row:row + n], None
            else:
                table, lo, hi = ctx
                cc, pe = self.cache.gather_blocks(layer, table)
                cc, pe = cc[:, lo:hi], pe[:, lo:hi]
                t = hi - lo
                m = torch.ones(n, t, dtype=torch.bool, device=table.device).tril(t - n)[None]
            o = attend(qn, qp, cc.to(qn.dtype), pe.to(qn.dtype), m)
            out[row:row + n] = o[0].to(out.dtype)
        return out[None]


class ModelRunner:
    """The model's forward over a step's packed rows, attending through `PagedAttention`."""

    def __init__(self, model: nn.Module, cache: PagedLatentCache, prefill_attention: str = "decompressed"):
        if prefill_attention not in ("decompressed", "absorbed"):
            raise ValueError(f"prefill_attention: expected 'decompressed' or 'absorbed' (got {prefill_attention!r})")
        self.model = model
        self.cache = cache
        self.prefill_attention = prefill_attention

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMeta) -> torch.Tensor:
        """Main model over packed tokens (N,) at positions (N,): final hidden states (N, dim), after the norm."""
        cache = PagedAttention(self.cache, meta, self.prefill_attention)
        return self.model.forward_hidden(input_ids[None], positions[None], cache=cache)[0]

    @torch.inference_mode()
    def mtp(self, k: int, next_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
            meta: AttnMeta) -> torch.Tensor:
        """MTP module k: row i combines hidden (N, dim) at position p−1 and next_ids at p = positions. Returns the
        module's normed output (N, dim); `logits` of it are its predictions for position p + 1."""
        cache = PagedAttention(self.cache, meta, self.prefill_attention)
        return self.model.mtp_step(k, next_ids[None], hidden[None], positions[None], cache=cache)[0]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.head(hidden).float()
