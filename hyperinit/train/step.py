"""Train state, sharded initialisation, and the pure train / eval steps.

    state_sh = step.state_shardings(param_sh, tx, mesh)      # from the params' shardings
    state = step.init_state(init_params_fn, tx, rng, state_sh)
    train_step = step.make_train_step(task.loss_fn, tx, state_sh, batch_sh)
    state, metrics = train_step(state, batch)                 # jitted, donates `state`

A step is a pure function of (state, batch): the dropout rng is
`fold_in(state.rng, state.step)`, so a resumed run replays exactly.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from hyperinit import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes.

  Attributes:
    step: int32 [], number of updates applied so far.
    params: the model's params (nested dict of arrays).
    opt_state: the optax state.
    rng: uint32 [2], raw key data of the base key (plain arrays checkpoint anywhere).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def state_shardings(param_shardings: Any, tx: optax.GradientTransformation, mesh: Mesh,
                    abstract_params: Any) -> TrainState:
  """Shardings of a TrainState for any optax `tx`.

  Each optimizer-state leaf follows its param (`sharding.like_params`): the
  param's sharding where its shape is the param's (Adam's moments), the param's
  mesh axes on the dims it kept otherwise (Adafactor's factored row / column
  statistics), replicated where nothing divides; counts are replicated.
  """
  rep = sharding.replicated(mesh)
  opt_abstract = jax.eval_shape(tx.init, abstract_params)
  return TrainState(step=rep, params=param_shardings, rng=rep,
                    opt_state=sharding.like_params(opt_abstract, param_shardings, rep,
                                                   abstract_params))


def abstract_state(tx: optax.GradientTransformation, abstract_params: Any,
                   shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs (with shardings) of a TrainState, e.g. a restore target."""
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                      opt_state=jax.eval_shape(tx.init, abstract_params),
                      rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def init_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
               rng: jax.Array, shardings: TrainState) -> TrainState:
  """Initialises params and optimizer state directly into their shards.

  `init_params(key) -> params`; one jit with `out_shardings`, so no device
  ever holds the whole model.  `rng` is a typed key; params use a split of it.
  """
  def init(key):
    pkey, skey = jax.random.split(key)
    params = init_params(pkey)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(skey))
  return sharding.sharded_init(init, rng, shardings)


def state_from_params(params: Any, tx: optax.GradientTransformation, rng: jax.Array,
                      shardings: TrainState) -> TrainState:
  """A fresh TrainState (step 0, new optimizer state) around existing sharded params."""
  def init(params, key):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.split(key)[1]))
  return jax.jit(init, out_shardings=shardings)(params, rng)


def _microbatches(batch: Any, k: int) -> Any:
  """[B, ...] -> [k, B/k, ...] taking rows i, i+k, ... into microbatch i.

  Each device keeps its own rows (a local reshape + transpose), so no data
  moves between devices.
  """
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f'batch of {x.shape[0]} rows is not divisible by grad_accum_steps={k}')
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(loss_fn: Callable[..., Any], tx: optax.GradientTransformation,
                    shardings: TrainState, batch_sharding: Any, *, grad_accum_steps: int = 1,
                    jit: bool = True) -> Callable[[TrainState, Any], tuple[TrainState, Any]]:
  """The train step `(state, batch) -> (state, metrics)`.

  Args:
    loss_fn: (params, batch, rng) -> (mean loss [], aux dict of scalar means).
    tx: the optax transformation.
    shardings: TrainState of shardings (in and out; `state` is donated).
    batch_sharding: sharding (or tree of) of the global batch.
    grad_accum_steps: k > 1 splits the batch into k microbatches and averages
      their gradients in a `lax.scan` (same update as one big batch, ~1/k of
      the activation memory).
    jit: return the jitted step (default) or the plain function.

  Returns:
    step function; metrics = {'loss', 'grad_norm', **aux} (replicated scalars).
  """
  k = int(grad_accum_steps)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def constrain(grads):
    return jax.lax.with_sharding_constraint(grads, shardings.params)

  def step(state: TrainState, batch: Any):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if k == 1:
      (loss, aux), grads = grad_fn(state.params, batch, rng)
      grads = constrain(grads)
    else:
      mbs = _microbatches(batch, k)
      first = jax.tree.map(lambda x: x[0], mbs)
      zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                           jax.eval_shape(grad_fn, state.params, first, rng))
      zeros = (zeros[0], constrain(zeros[1]))

      def body(carry, xs):
        i, mb = xs
        (l, a), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, ((l, a), constrain(g))), None

      ((loss, aux), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(k), mbs))
      loss, aux, grads = jax.tree.map(lambda x: x / k, (loss, aux, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), **aux}
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
    return new, metrics

  if not jit:
    return step
  return jax.jit(step, in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, shardings.step), donate_argnums=0)


def make_eval_step(eval_fn: Callable[..., Any], param_shardings: Any, mesh: Mesh,
                   *deprecated: Any) -> Callable[[Any, Any], Any]:
  """Jitted `(params, batch) -> dict of sums` (replicated scalars).

  The batch keeps the sharding it arrives with (eval batches may carry extra
  keys, e.g. a padding mask).  The old form `(eval_fn, param_shardings,
  batch_sharding, mesh)` still works for one release, with a DeprecationWarning.
  """
  if deprecated:
    if len(deprecated) != 1:
      raise TypeError(f'make_eval_step takes (eval_fn, param_shardings, mesh); got '
                      f'{3 + len(deprecated)} positional arguments')
    warnings.warn('make_eval_step(eval_fn, param_shardings, batch_sharding, mesh) is '
                  'deprecated: the batch sharding was unused; call make_eval_step(eval_fn, '
                  'param_shardings, mesh)', DeprecationWarning, stacklevel=2)
    mesh = deprecated[0]
  return jax.jit(eval_fn, in_shardings=(param_shardings, None),
                 out_shardings=NamedSharding(mesh, jax.sharding.PartitionSpec()))
