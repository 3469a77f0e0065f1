"""Every on-disk format of parameters: orbax run checkpoints and "params + config" directories.

Run checkpoints (`Checkpointer`, `<workdir>/checkpoints`) hold one sub-directory
per saved step, each with the items

  params     the model params (orbax StandardSave: sharded, per-shard files)
  opt_state  the optimizer state
  train      {'step': int32 [], 'rng': uint32 [2]}
  data       the grain iterator state, one JSON file per process
  meta       JSON: the model config (`cfg.to_dict()`), the ParamSpec tree, the
             run's config, process count and mesh shape at save time.

A params directory (`save_params` / `save_model`: a clone, a GHN prediction, a
GHN itself) is the same layout with one step (0) and only the items `params`
and `meta`, so everything that reads params reads both: `load_params(path)`
gives `(model_config, params)` from a run workdir, a checkpoint root, one step
directory, a params directory or a Hugging Face directory; this is what
`config.init_from`, the clone CLI and `experiments.predict` use.

Orbax writes each step into a temporary directory and renames it when every
item is complete, so a step directory is either whole or absent (a kill during
an async save leaves only a temporary directory, which is ignored); params
directories are built beside their destination and renamed into place.
Restoring takes target shardings, so a checkpoint written on one mesh / device
count / process count restores onto any other.

A step holds any pytree: `Checkpointer.save(step, state)` writes a TrainState as the items
above, a dict `{name: pytree}` as one item per entry (e.g. `{'state': ..., 'ema': ...}`),
and any other pytree as the item 'state'; `restore(target)` gives back `target`'s type.

Modules: `run` (the `Checkpointer`: save, restore, checksums), `resume` (its resume policy:
the newest good step, falling back to older ones, setting broken steps aside), `lock` (one
run per workdir) and `params` (params directories and every reader of params).
"""

from hyperinit.checkpoint.params import (is_hf_dir, load_params, read_meta, read_model_config,
                                         restore_params, save_model, save_params)
from hyperinit.checkpoint.lock import WorkdirBusyError, WorkdirLock
from hyperinit.checkpoint.resume import CheckpointError, Restored
from hyperinit.checkpoint.run import (ITEMS, PARAMS_ITEMS, RUN_ITEMS, Checkpointer, resolve,
                                      run_meta, state_from_items, state_items)

__all__ = ['ITEMS', 'PARAMS_ITEMS', 'RUN_ITEMS', 'CheckpointError', 'Checkpointer', 'Restored',
           'WorkdirBusyError', 'WorkdirLock', 'is_hf_dir', 'load_params', 'read_meta',
           'read_model_config', 'resolve', 'restore_params', 'run_meta', 'save_model',
           'save_params', 'state_from_items', 'state_items']
