"""APOLLO-Mini (Zhu et al., arXiv 2412.05270): APOLLO at rank 1 with one tensor-wise scaling factor per weight and
scale sqrt(128) applied before the limiter (scripts/pretrain_c4/llama_*_apollo_mini.sh: --rank 1 --scale_type
tensor --apollo_scale 128 --scale_front). Rank 1 is its definition, so `rank=` does not apply (nor name runs)."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import setting
from .apollo import FSDP_REFUSAL, ApolloSettings, build_optimizer, merge, prepare, state_bytes  # noqa: F401
from .spec import Labels, MethodSpec


@dataclass
class ApolloMiniSettings(ApolloSettings):
    name: str = setting("apollo_mini", "APOLLO-Mini (Zhu et al., arXiv 2412.05270): rank 1, tensor-wise scaling")
    scale_type: str = setting("tensor", "scaling factor per tensor (APOLLO-Mini) or per channel",
                              choices=("channel", "tensor"))
    apollo_scale: float = setting(128.0, "the reference's --apollo_scale: updates are multiplied by its square "
                                         "root (the paper's alpha = sqrt(128))", gt=0, finite=True)
    scale_front: bool = setting(True, "apply sqrt(apollo_scale) before the norm-growth limiter (the reference's "
                                      "--scale_front for APOLLO-Mini)")


METHOD = MethodSpec("apollo_mini", ApolloMiniSettings,
                    Labels(glue="APOLLO-Mini", c4="APOLLO-Mini", memory="APOLLO-Mini"),
                    order=80, low_rank=False, color="#bcbd22", fsdp_refusal=FSDP_REFUSAL)
