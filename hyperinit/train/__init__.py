"""Training machinery: sharded train/eval steps, optimizers from configs, the one training loop.

    from hyperinit import train
    result = train.train_and_evaluate(config, workdir)     # configs/lm.py, configs/vit.py

Pieces for other experiments (muP sweeps, clone-then-train, GHN training):
`from_config` (optimizer), `make_train_step`, `init_state`, `setup`, `evaluate`, and
`run_loop` with `hooks` (the loop itself, around any step function).
"""

from hyperinit.train import hooks
from hyperinit.train.init_from import load_init_params
from hyperinit.train.loop import evaluate, global_batch, run_loop, setup, train_and_evaluate
from hyperinit.train.optim import decay_mask, from_config, make_schedule
from hyperinit.train.step import (TrainState, abstract_state, init_state, make_eval_step,
                                  make_train_step, state_from_params, state_shardings)
from hyperinit.train.tasks import Task, flops_per_token, make_task, resolve_model_config

__all__ = ['Task', 'TrainState', 'abstract_state', 'decay_mask', 'evaluate', 'flops_per_token',
           'from_config', 'global_batch', 'hooks', 'init_state', 'load_init_params',
           'make_eval_step', 'make_schedule', 'make_task', 'make_train_step',
           'resolve_model_config', 'run_loop', 'setup', 'state_from_params', 'state_shardings',
           'train_and_evaluate']
