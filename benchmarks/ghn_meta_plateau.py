"""How long a GHN sits on the unigram plateau: meta-training on a FIXED pair of architectures.

    PYTHONPATH=. python benchmarks/ghn_meta_plateau.py --steps=1500 [--task=gpt] [--noise=0] [--lr=1e-3]

Takes the first two architectures of the first meta-batch group of
`configs/ghn.py:<task>_local`, meta-trains a fresh GHN (the config's GHN and
meta-optimiser, cosine schedule over --steps) on them alone (one compile), and
prints the mean training task loss of every 50 steps, plus how similar the
GHN's node codes are across the nodes of one graph (mean pairwise cosine of
relu(S), LoGAH only) at the start and at the end.  On the embedded byte-level
corpus the unigram entropy is 3.23 nats: a curve that stays there means the
predicted LMs ignore their input.
"""

from __future__ import annotations

import dataclasses
import time

from absl import app, flags
import jax
import numpy as np

from configs import ghn as ghn_configs
from hyperinit.logah import batching, ghn as ghn_lib, meta, tasks
from hyperinit.logah.graph import build_graph

_STEPS = flags.DEFINE_integer('steps', 1500, 'meta-training steps')
_TASK = flags.DEFINE_enum('task', 'gpt', ['gpt', 'vit'], 'which CPU pool')
_NOISE = flags.DEFINE_float('noise', 0.0, 'MetaConfig.noise')
_LR = flags.DEFINE_float('lr', None, 'peak meta learning rate (default: the config\'s, 1e-3)')
_EVERY = flags.DEFINE_integer('every', 50, 'print the mean loss of every N steps')


def code_cosine(cfg: ghn_lib.GHNConfig, params: dict, target) -> float:
  """Mean pairwise cosine similarity of relu(S) codes over the nodes of target's graph."""
  graph = build_graph(target)
  codes = ghn_lib.node_codes(cfg, params, batching.batch_graphs([graph]))
  s = np.maximum(np.asarray(codes['s'][0, :graph.num_nodes]).reshape(graph.num_nodes, -1), 0)
  s = s / (np.linalg.norm(s, axis=1, keepdims=True) + 1e-12)
  iu = np.triu_indices(graph.num_nodes, 1)
  return float((s @ s.T)[iu].mean())


def main(argv):
  del argv
  cfg = ghn_configs.get_config(f'{_TASK.value}_local')
  _, groups = tasks.make_pool(cfg)
  group = groups[0][:2]
  gcfg = tasks.ghn_config(cfg)
  mc = dataclasses.replace(tasks.meta_config(cfg), total_steps=_STEPS.value, noise=_NOISE.value)
  if _LR.value is not None:
    mc = dataclasses.replace(mc, lr=_LR.value)
  state = meta.init_state(gcfg, mc, jax.random.key(0))
  graphs = meta.batch_for(group)
  if gcfg.decoder == 'logah':
    print(f'node-code cosine at GHN init: {code_cosine(gcfg, state["params"], group[0]):.3f}')
  data = iter(tasks.data_loader(cfg, 'train', train=True, seed=0,
                                batch_size=int(cfg.data.batch_size)))
  losses, t0 = [], time.perf_counter()
  for step in range(1, _STEPS.value + 1):
    batch = tasks.meta_batch(next(data))
    state, m = meta.meta_step(state, graphs, batch, jax.random.key(step), ghn_cfg=gcfg,
                              meta_cfg=mc, targets=group)
    losses.append(float(m['task_loss']))
    if step % _EVERY.value == 0:
      print(f'step {step}: mean task loss {np.mean(losses[-_EVERY.value:]):.3f} '
            f'({time.perf_counter() - t0:.0f} s)', flush=True)
  if gcfg.decoder == 'logah':
    print(f'node-code cosine after {_STEPS.value} steps: '
          f'{code_cosine(gcfg, state["params"], group[0]):.3f}')


if __name__ == '__main__':
  app.run(main)
