"""Width and depth multipliers of every parameter leaf, from a base model and a target.

muP (Yang et al., Tensor Programs V, arXiv 2203.03466) needs, per parameter,
which of its dimensions grow with width ("infinite" dims) and by how much
relative to a *base* model.  Here that is derived from the `ParamSpec`
annotations alone (logical axes + fan-in axes), never from parameter names or
"the last axis":

* an **infinite axis** is a logical axis whose size differs between the base
  and the target (e.g. 'embed', 'mlp', 'heads' or 'head_dim'), or between the
  base and an optional *delta* model (needed at base width itself, as in
  microsoft/mup's `set_base_shapes(model, base, delta=...)`), or one named in
  `infinite_axes`; `finite_axes` (default: the scan axis 'layers') never count;
* a leaf's **fan-in multiplier** is the product of target/base sizes over its
  infinite fan-in dims, its **fan-out multiplier** the same over the others;
* its **class**:

  ==========  ======================================  ==============================
  class       infinite dims                           examples
  ==========  ======================================  ==============================
  input       fan-out only, fan-in finite (non-empty)  token / position / patch embed
  vector      fan-out only, no fan-in axes             biases, norm gains, cls token
  hidden      fan-in and fan-out                       q/k/v/out, MLP kernels
  output      fan-in only, and it is the readout       lm_head, ViT head kernel
  bottleneck  fan-in only, not the readout             MQA key/value kernel when heads
                                                       grow and kv_heads stay 1
  finite      none                                     readout bias (classes,)
  ==========  ======================================  ==============================

The readout is the leaf with role 'readout' (declared, or inferred by
`spec.infer_roles` for a leaf writing 'vocab' / 'classes'), or the paths
passed as `readout=`; when none of these decides, muP raises instead of
guessing (`find_readout`).  A tied embedding (role 'tied_embedding') is class 'input': in the
"Table 8" form the input and output rules prescribe the same init and learning
rate for it, and the output's 1/m lives in the forward pass (`logits_mult`).

The result, `Multipliers`, is a plain mapping path -> `LeafMult` plus a few
floats.  It serialises to JSON (`to_json` / `from_json`) so a checkpoint or a
config can carry it; nothing is attached to the arrays, so sharding,
`jax.device_put`, or restoring a checkpoint cannot lose it (the complaint
about microsoft/mup's `infshape` attribute under FSDP).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from typing import Any, Iterable, Mapping

import jax

from hyperinit import models
from hyperinit import spec as spec_lib

CLASSES = ('input', 'vector', 'hidden', 'output', 'bottleneck', 'finite')

# Leaves inside a residual block get the depth rules.  Blocks are recognised
# by the scan axis ('layers', from `nn.scan`) or by the unrolled naming that
# `hyperinit.models.layers.run_blocks` uses (block_0, block_1, ...).
DEFAULT_BLOCK_PATTERN = r'(^|/)block_\d+(/|$)'


@dataclasses.dataclass(frozen=True)
class LeafMult:
  """muP facts about one parameter leaf.

  Attributes:
    cls: one of `CLASSES`.
    fan_in_mult: product of target/base sizes over the infinite fan-in dims.
    fan_out_mult: the same over the infinite non-fan-in dims.
    in_block: whether the leaf sits in a residual block (depth rules apply).
    role: the annotation's role ('tied_embedding', 'query', 'readout', ...).
  """
  cls: str
  fan_in_mult: float = 1.0
  fan_out_mult: float = 1.0
  in_block: bool = False
  role: str = ''

  def __post_init__(self):
    if self.cls not in CLASSES:
      raise ValueError(f'unknown muP leaf class {self.cls!r}; expected one of {CLASSES}')

  def to_json(self) -> list[Any]:
    return [self.cls, self.fan_in_mult, self.fan_out_mult, self.in_block, self.role]

  @classmethod
  def from_json(cls, v) -> 'LeafMult':
    c, fi, fo, blk, role = v
    return cls(str(c), float(fi), float(fo), bool(blk), str(role))


@dataclasses.dataclass(frozen=True)
class Multipliers:
  """Per-leaf muP multipliers of a target model relative to its base.

  Attributes:
    leaves: path ('block_0/attn/query/kernel') -> `LeafMult`.
    axis_mults: target/base size of every infinite logical axis, e.g. {'embed': 4.0}
      (1.0 for a width axis at base width).
    depth_mult: target depth / base depth (1.0 when depth is not scaled).
    depth_alpha: residual-branch exponent for depth transfer (branch x
      depth_mult^-alpha): 0.5 depth-muP, 1.0 CompleteP, None for width-only muP.
  """
  leaves: Mapping[str, LeafMult]
  axis_mults: Mapping[str, float] = dataclasses.field(default_factory=dict)
  depth_mult: float = 1.0
  depth_alpha: float | None = None

  def __getitem__(self, path: str) -> LeafMult:
    try:
      return self.leaves[path]
    except KeyError:
      known = sorted(self.leaves)
      raise KeyError(f'no muP multipliers for leaf {path!r}: the multipliers were built for a '
                     f'different parameter tree ({len(known)} leaves, e.g. {known[:3]})') from None

  def __len__(self) -> int:
    return len(self.leaves)

  @property
  def readout_width_mult(self) -> float:
    """m: the width ratio (target / base) of the readout's input.

    Not the forward multiplier: that is output_mult / m (`mup_config` sets
    `logits_mult` to it).  Read from the untied readout's fan-in or the tied
    embedding's fan-out.
    """
    ms = {v.fan_in_mult for v in self.leaves.values() if v.cls == 'output'}
    ms |= {v.fan_out_mult for v in self.leaves.values() if v.role == 'tied_embedding'}
    if not ms:
      # No readout leaf with an infinite fan-in: the readout did not widen.
      has_readout = any(v.role in ('readout', 'tied_embedding') for v in self.leaves.values())
      if has_readout:
        return 1.0
      raise ValueError('no readout found: annotate the output layer with role="readout" '
                       '(or pass readout=[paths] to width_multipliers)')
    if len(ms) > 1:
      raise ValueError(f'readout leaves disagree on their width multiplier: {sorted(ms)}')
    return ms.pop()

  def depth_factor(self, exponent: float) -> float:
    """depth_mult ** exponent, or 1 when depth transfer is off."""
    if self.depth_alpha is None:
      return 1.0
    return float(self.depth_mult ** exponent)

  def tree(self, like: Any) -> Any:
    """A pytree with `like`'s structure whose leaves are the `LeafMult`s (for inspection)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: self[spec_lib.path_str(p)], like)

  def to_json(self) -> str:
    return json.dumps({'leaves': {k: v.to_json() for k, v in sorted(self.leaves.items())},
                       'axis_mults': dict(sorted(self.axis_mults.items())),
                       'depth_mult': self.depth_mult, 'depth_alpha': self.depth_alpha},
                      indent=1)

  @classmethod
  def from_json(cls, text: str) -> 'Multipliers':
    d = json.loads(text)
    for key in ('leaves', 'axis_mults', 'depth_mult', 'depth_alpha'):
      if key not in d:
        raise ValueError(f'muP multipliers JSON lacks the field {key!r}')
    return cls({k: LeafMult.from_json(v) for k, v in d['leaves'].items()},
               {k: float(v) for k, v in d['axis_mults'].items()},
               float(d['depth_mult']),
               None if d['depth_alpha'] is None else float(d['depth_alpha']))


def _classify(s: spec_lib.ParamSpec, infinite: set[int], is_readout: bool) -> str:
  inf_in = any(i in infinite for i in s.fan_in)
  inf_out = any(i in infinite for i in s.fan_out)
  if inf_in and inf_out:
    return 'hidden'
  if inf_in:
    return 'output' if is_readout else 'bottleneck'
  if inf_out:
    return 'input' if s.fan_in else 'vector'
  return 'finite'


# Roles that say "this leaf is (or, tied, also is) the readout".
READOUT_ROLES = frozenset({'readout', 'tied_embedding'})


def find_readout(flat_specs: Mapping[str, spec_lib.ParamSpec], width_axes: set[str]) -> set[str]:
  """Paths of the readout leaves, from the roles; raises when it cannot tell.

  `flat_specs` went through `spec.infer_roles`, so a leaf writing 'vocab' or
  'classes' from a non-data axis (an LM head, a classifier) has role 'readout'
  unless another role was declared.  Leaves with role 'readout' /
  'tied_embedding' are the readout.  If there is none, a leaf with a width
  fan-in, a fixed output and no role could be the readout or a bottleneck (an
  MQA key kernel): the ValueError names them and says what to pass (muP's
  readout gets another init, LR and forward rule, so it is never guessed).
  """
  declared = {p for p, s in flat_specs.items() if s.role in READOUT_ROLES}
  if declared:
    return declared
  candidates = [p for p, s in flat_specs.items()
                if s.role == '' and any(s.axes[i] in width_axes for i in s.fan_in)
                and not any(s.axes[i] in width_axes for i in s.fan_out)]
  if not candidates:
    return set()
  shown = ', '.join(f'{p!r} {tuple(flat_specs[p].axes)}' for p in candidates[:4])
  raise ValueError(
      f'muP cannot tell which leaf is the readout: {shown} take a width input and give a '
      f'fixed-size output, and none is annotated as the readout. Pass '
      f'readout=[{candidates[0]!r}] (the output layer\'s kernel; readout=() if the model has '
      f'none and these are bottlenecks), name its output axis \'vocab\' or \'classes\', or '
      f'annotate it with role=\'readout\'')


def _differing(sizes: Mapping[str, int], base_sizes: Mapping[str, int], flat_s, what: str,
               finite_axes: set[str]) -> set[str]:
  out = set()
  for ax, n in sizes.items():
    if ax in finite_axes:
      continue
    if ax not in base_sizes:
      user = next(p for p, s in flat_s.items() if ax in s.axes)
      raise ValueError(f'logical axis {ax!r} (used by {what} leaf {user!r}) does not occur in '
                       f'the base model; base axes: {sorted(base_sizes)}')
    if n != base_sizes[ax]:
      out.add(ax)
  return out


def width_multipliers(specs: Any, shapes: Any, *old_positional: Any, base_specs: Any = None,
                      base_shapes: Any = None, delta_specs: Any = None, delta_shapes: Any = None,
                      infinite_axes: Iterable[str] | None = None,
                      finite_axes: Iterable[str] = ('layers',),
                      readout: Iterable[str] | None = None,
                      depth: int | None = None, base_depth: int | None = None,
                      depth_alpha: float | None = None,
                      block_pattern: str = DEFAULT_BLOCK_PATTERN) -> Multipliers:
  """Per-leaf multipliers of a target (specs, shapes) relative to a base.

  Args:
    specs, shapes: the target's `ParamSpec` tree and arrays / ShapeDtypeStructs.
    base_specs, base_shapes: the same for the base model.  The trees may differ
      in structure (e.g. more unrolled blocks): only logical axis sizes are compared.
    delta_specs, delta_shapes: optional third model of another width (as
      microsoft/mup's `delta`): axes that differ between it and the base are
      infinite too.  Needed when the target *is* the base width, where no axis
      differs but the classes (e.g. which leaf is zero-initialised) must not change.
    infinite_axes: explicit width axes instead of (base vs target) + (base vs delta).
    finite_axes: logical axes that never count as width, even if their sizes differ.
    readout: paths of the readout leaves (() for a model without one).  Default:
      the leaves with role 'readout' (or 'tied_embedding'), declared or
      inferred by `spec.infer_roles` (output axis 'vocab' or 'classes').  When neither finds one and some leaf has a width fan-in and a
      fixed output (readout or bottleneck?), a ValueError names the leaves and
      this argument: muP never guesses the readout.
    depth, base_depth: number of residual blocks (for depth transfer).
    depth_alpha: residual-branch exponent (0.5 depth-muP, 1.0 CompleteP) or None.
    block_pattern: regex on the path marking residual-block leaves of unrolled models
      (leaves with a 'layers' axis always count as in a block).

  Returns:
    `Multipliers` for every leaf of the target.
  """
  if old_positional:
    if len(old_positional) != 2 or base_specs is not None or base_shapes is not None:
      raise TypeError('width_multipliers(specs, shapes, *, base_specs=, base_shapes=, ...): '
                      'the base trees are keyword-only')
    warnings.warn('width_multipliers(specs, shapes, base_specs, base_shapes) is deprecated: pass '
                  'base_specs= and base_shapes= by keyword', DeprecationWarning, stacklevel=2)
    base_specs, base_shapes = old_positional
  if base_specs is None or base_shapes is None:
    raise TypeError('width_multipliers needs the base model: base_specs= and base_shapes=')
  spec_lib.check_tree(shapes, specs, 'target params')
  spec_lib.check_tree(base_shapes, base_specs, 'base params')
  sizes = spec_lib.axis_sizes(shapes, specs)
  base_sizes = spec_lib.axis_sizes(base_shapes, base_specs)
  # Roles the axes imply (readout onto 'vocab'/'classes', embedding tables); declared ones win.
  specs = spec_lib.infer_roles(specs)
  flat_s = spec_lib.flatten(specs, is_leaf=spec_lib.is_spec)
  finite_axes = set(finite_axes)
  if infinite_axes is not None:
    inf_axes = set(infinite_axes)
    unknown = sorted(inf_axes - set(sizes))
    if unknown:
      raise ValueError(f'infinite_axes {unknown} are not logical axes of the target; '
                       f'its axes: {sorted(sizes)}')
    _differing(sizes, base_sizes, flat_s, 'target', finite_axes)   # the base has every axis
  else:
    inf_axes = _differing(sizes, base_sizes, flat_s, 'target', finite_axes)
    if delta_specs is not None:
      spec_lib.check_tree(delta_shapes, delta_specs, 'delta params')
      inf_axes |= _differing(spec_lib.axis_sizes(delta_shapes, delta_specs), base_sizes,
                             spec_lib.flatten(delta_specs, is_leaf=spec_lib.is_spec), 'delta',
                             finite_axes)
  inf_axes -= finite_axes
  if not inf_axes:
    raise ValueError('no logical axis differs between the base and the target (or delta), so '
                     'muP cannot tell which axes are width: pass a delta model of another '
                     'width or infinite_axes=[...]')
  axis_mults = {ax: sizes[ax] / base_sizes[ax] for ax in sorted(inf_axes) if ax in sizes}
  readout = None if readout is None else set(readout)
  if readout is not None:
    unknown = sorted(readout - set(flat_s))
    if unknown:
      raise ValueError(f'readout paths {unknown} are not leaves of the target params')
  if depth_alpha is not None:
    if not 0.0 <= depth_alpha <= 1.0:
      raise ValueError(f'depth_alpha={depth_alpha} must lie in [0, 1] (0.5 depth-muP, 1 CompleteP)')
    if depth is None or base_depth is None:
      raise ValueError('depth transfer (depth_alpha) needs depth and base_depth')
  if (depth is None) != (base_depth is None):
    raise ValueError(f'give both depth and base_depth, got depth={depth}, base_depth={base_depth}')
  if readout is None:
    readout = find_readout(flat_s, set(axis_mults))
  block_re = re.compile(block_pattern)
  leaves = {}
  for path, s in flat_s.items():
    inf = {i for i, ax in enumerate(s.axes) if ax in axis_mults}
    fi = math.prod(axis_mults[s.axes[i]] for i in s.fan_in if i in inf)
    fo = math.prod(axis_mults[s.axes[i]] for i in s.fan_out if i in inf)
    is_readout = path in readout
    in_block = 'layers' in s.axes or bool(block_re.search(path))
    leaves[path] = LeafMult(_classify(s, inf, is_readout), float(fi), float(fo), in_block, s.role)
  depth_mult = 1.0 if depth is None else depth / base_depth
  return Multipliers(leaves, axis_mults, float(depth_mult), depth_alpha)


def default_delta(base_cfg):
  """The base config at twice the width: embed_dim, mlp_dim (and an explicit head_dim) x2.

  So by default width grows through head_dim with the head count fixed; pass
  your own delta_cfg to `config_multipliers` if your models grow heads instead.
  """
  kw = dict(embed_dim=2 * base_cfg.embed_dim, mlp_dim=2 * base_cfg.mlp_dim)
  if base_cfg.head_dim is not None:
    kw['head_dim'] = 2 * base_cfg.head_dim
  return base_cfg.replace(**kw)


def config_multipliers(cfg, base_cfg, *, delta_cfg=None, depth_alpha: float | None = None,
                       **kwargs) -> Multipliers:
  """`width_multipliers` for two hyperinit model configs (Transformer or ViT).

  Depth comes from `num_layers`; everything else from the annotations.  When
  `cfg` has the base's width and no `delta_cfg` is given, `default_delta`
  decides which axes are width.
  """
  for other, what in ((base_cfg, 'base'), (delta_cfg, 'delta')):
    if other is not None and type(cfg) is not type(other):
      raise TypeError(f'target and {what} configs differ in kind: {type(cfg).__name__} vs '
                      f'{type(other).__name__}')
  specs, shapes = models.param_specs(cfg), models.param_shapes(cfg)
  bspecs, bshapes = models.param_specs(base_cfg), models.param_shapes(base_cfg)
  if delta_cfg is None:
    widths = lambda s, p: {k: v for k, v in spec_lib.axis_sizes(p, s).items() if k != 'layers'}
    if widths(specs, shapes) == widths(bspecs, bshapes):
      delta_cfg = default_delta(base_cfg)
  if delta_cfg is not None:
    kwargs.update(delta_specs=models.param_specs(delta_cfg),
                  delta_shapes=models.param_shapes(delta_cfg))
  return width_multipliers(specs, shapes, base_specs=bspecs, base_shapes=bshapes,
                           depth=cfg.num_layers,
                           base_depth=base_cfg.num_layers, depth_alpha=depth_alpha, **kwargs)


def summary(mults: Multipliers) -> str:
  """One line per leaf: path, class, fan-in and fan-out multipliers (for logs)."""
  w = max((len(p) for p in mults.leaves), default=0)
  lines = [f'{p:<{w}}  {v.cls:<10} fan_in x{v.fan_in_mult:g} fan_out x{v.fan_out_mult:g}'
           f'{"  [block]" if v.in_block else ""}' for p, v in sorted(mults.leaves.items())]
  return '\n'.join(lines)


def class_counts(mults: Multipliers) -> dict[str, int]:
  out: dict[str, int] = {}
  for v in mults.leaves.values():
    out[v.cls] = out.get(v.cls, 0) + 1
  return out

