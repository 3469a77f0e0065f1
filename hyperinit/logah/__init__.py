"""LoGAH: a graph hypernetwork (jraph + Flax) that predicts ViT and GPT parameters.

    from hyperinit.logah import GHNConfig, init, predict
    cfg = GHNConfig()                                   # LoGAH: hidden 64, r 32, K 32768
    params = predict(cfg, init(cfg, jax.random.key(0)), models.get_config('gpt2-large'))  # eager
    params = decode_params(cfg, p, target_codes(cfg, p, target), target)  # jittable (jit / grad)

Modules: graph (computational graphs), batching (jraph buckets), encoder
(Graphormer), decoders (low-rank / tiled / normalisation), ghn (the module and
predict), spectrum (top-1 energy share, effective rank), samplers (architecture
pools), meta (meta-training step), meta_mesh (a meta-batch split over a device mesh), saving.
"""

from hyperinit.logah.ghn import (GHNConfig, count_params, decode_params, init, predict,
                                 target_codes)
from hyperinit.logah.graph import Graph, build_graph
from hyperinit.logah.spectrum import spectrum_stats

__all__ = ['GHNConfig', 'Graph', 'build_graph', 'count_params', 'decode_params', 'init',
           'predict', 'spectrum_stats', 'target_codes']
