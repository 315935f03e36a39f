"""Site entries shared by the diffusion-transformer adapters (data only): the joint (MMDiT)
block of SD3 and Flux, where image and text streams attend together and each keeps its own
feed-forward. Names follow one scheme: ``dit.blocks.{i}`` (the block's image-stream output),
``.context`` (its text-stream output), ``.attn.joint`` / ``.attn.joint.context`` (the joint
attention's image / text outputs), ``.attn.joint.context_k`` / ``.context_v`` (the text stream's key
and value projections: where closed-form edits of text conditioning act), ``.ff`` / ``.ff.context``."""

from __future__ import annotations

from bench.sites import SiteSpec
from models.adapters._format import BlockSite


def joint_block(context_in_last: bool) -> tuple[BlockSite, ...]:
    pre = not context_in_last  # SD3's last block reads the text stream but does not update it
    return (
        BlockSite("", "block", SiteSpec("", index=1)),
        BlockSite("context", "block_context", SiteSpec("", index=0), stream="text", all_but_last=pre),
        BlockSite("attn.joint", "joint_attn", SiteSpec("attn", index=0)),
        BlockSite("attn.joint.context", "joint_attn_context", SiteSpec("attn", index=1), stream="text",
                  all_but_last=pre),
        BlockSite("attn.joint.context_k", "cross_k", SiteSpec("attn.add_k_proj"), stream="text"),
        BlockSite("attn.joint.context_v", "cross_v", SiteSpec("attn.add_v_proj"), stream="text"),
        BlockSite("ff", "mlp", SiteSpec("ff")),
        BlockSite("ff.context", "mlp_context", SiteSpec("ff_context"), stream="text", all_but_last=pre),
    )


