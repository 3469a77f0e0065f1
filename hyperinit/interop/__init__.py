"""Hugging Face interop: safetensors checkpoint directories <-> (config, params).

    params, cfg = interop.load_hf('path/to/hf-checkpoint')   # (params, cfg), like every loader
    interop.save_hf('path/to/export', cfg, params, max_shard_size='2GB')

Families: gpt2, opt (pre-LN), gpt_neox, llama, olmo (causal LMs) and vit
(ViTForImageClassification).  No torch needed.
"""

from hyperinit.interop.convert import stack_layers, unstack_layers
from hyperinit.interop.families import FAMILIES
from hyperinit.interop.files import atomic_dir, companion_files, parse_size, read_config
from hyperinit.interop.hf import (check_exportable, config_from_hf, exportable_problems, hf_config,
                                  is_exportable, load_hf, require_exportable, save_hf)

__all__ = ['FAMILIES', 'atomic_dir', 'check_exportable', 'companion_files', 'config_from_hf',
           'exportable_problems', 'hf_config', 'is_exportable', 'load_hf', 'parse_size',
           'read_config', 'require_exportable', 'save_hf', 'stack_layers', 'unstack_layers']
