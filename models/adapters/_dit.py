"""Site entries shared by the diffusion-transformer adapters (data only): the joint (MMDiT)
block of SD3 and Flux, where image and text streams attend together and each keeps its own
feed-forward. Names follow one scheme: ``dit.blocks.{i}`` (the block's image-stream output),
``.context`` (its text-stream output), ``.attn.joint`` / ``.attn.joint.context`` (the joint
attention's image / text outputs), ``.attn.joint.context_k`` / ``.context_v`` (the text stream's key
and value projections, kinds ``context_k`` / ``context_v``: not a UNet's ``cross_k`` / ``cross_v``,
since their inputs are timestep-modulated and, after the first block, have attended to the image),
``.ff`` / ``.ff.context``; with ``patterns`` (a wrapper that installs
:class:`models.hf_dit.JointSiteAttnProcessor`): ``.attn.joint.pattern`` (the joint map over image
then text tokens) and ``.attn.joint.cross.pattern`` (its image-query × text-key block, kind
``cross_pattern``: the cross-attention map of a joint block)."""

from __future__ import annotations

from bench.sites import SiteSpec
from models.adapters._format import BlockSite


def joint_block(context_in_last: bool, patterns: bool = False) -> tuple[BlockSite, ...]:
    pre = not context_in_last  # SD3's last block reads the text stream but does not update it
    maps = (BlockSite("attn.joint.pattern", "pattern", SiteSpec("attn.processor.probs")),
            BlockSite("attn.joint.cross.pattern", "cross_pattern", SiteSpec("attn.processor.cross")))
    return (
        BlockSite("", "block", SiteSpec("", index=1)),
        BlockSite("context", "block_context", SiteSpec("", index=0), stream="text", all_but_last=pre),
        BlockSite("attn.joint", "joint_attn", SiteSpec("attn", index=0)),
        BlockSite("attn.joint.context", "joint_attn_context", SiteSpec("attn", index=1), stream="text",
                  all_but_last=pre),
        *(maps if patterns else ()),
        BlockSite("attn.joint.context_k", "context_k", SiteSpec("attn.add_k_proj"), stream="text"),
        BlockSite("attn.joint.context_v", "context_v", SiteSpec("attn.add_v_proj"), stream="text"),
        BlockSite("ff", "mlp", SiteSpec("ff")),
        BlockSite("ff.context", "mlp_context", SiteSpec("ff_context"), stream="text", all_but_last=pre),
    )
