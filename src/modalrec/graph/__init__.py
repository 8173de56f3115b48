"""Interaction graphs for graph-guided interest expansion (MMBee's GIE, offline part).

- `swing`: the user->streamer gifting graph (`build_u2a`) and the streamer graph by Swing (`swing`);
- `graphcl`: GraphCL pre-training of user and streamer embeddings on both graphs;
- `gie`: metapath expansion (U->A->A, A->U->A) and `GraphExpansion`, the fitted object the task
  looks batches up in, with its `GIEConfig`.
"""

from .gie import GIEConfig, GraphExpansion, expand_streamers, expand_users
from .graphcl import GraphCLParams, pretrain_graphcl
from .swing import CSR, U2AGraph, build_u2a, swing

__all__ = [
    "CSR", "GIEConfig", "GraphCLParams", "GraphExpansion", "U2AGraph", "build_u2a", "expand_streamers",
    "expand_users", "pretrain_graphcl", "swing",
]
