"""The config keys the runtime and Mini-RETURNN configs use, so that a misspelt key is caught, not ignored.

Also the keys whose RETURNN meaning this runtime does not have (TensorFlow, Horovod, mainline's DDP): a config
that sets them stops with the key named instead of running something other than what it asks for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

KNOWN_CONFIG_KEYS = frozenset("""
    task device train dev eval_datasets forward forward_data eval search_data
    batch_size max_seqs max_seq_length min_seq_length chunking_options batch_drop_last
    num_workers_per_gpu data_worker_type data_loader_pacing pin_training_loop
    num_epochs start_epoch save_interval model load load_epoch import_model_train_epoch1 preload_from_files
    load_ignore_missing_vars allow_missing_optimizer_checkpoint allow_random_model_init cleanup_old_models
    store_checkpoints_in_background use_cache_manager
    optimizer learning_rate learning_rates learning_rate_control learning_rate_file min_learning_rate
    learning_rate_control_error_measure learning_rate_control_min_num_epochs_per_new_lr
    learning_rate_control_relative_error_relative_lr relative_error_div_by_old newbob_relative_error_div_by_old
    newbob_learning_rate_decay newbob_learning_rate_growth newbob_relative_error_threshold
    newbob_relative_error_grow_threshold newbob_error_threshold newbob_multi_num_epochs newbob_multi_update_interval
    learning_rate_decay learning_rate_growth
    dynamic_learning_rate learning_rate_piecewise_steps learning_rate_piecewise_values
    learning_rate_piecewise_by_epoch_continuous learning_rate_warmup_steps learning_rate_invsqrt_norm
    learning_rate_cosine_decay_steps learning_rate_cosine_decay_min_factor
    weight_decay gradient_clip gradient_clip_norm gradient_clip_norm_invalid_gradient_threshold gradient_noise
    accum_grad_multiple_step torch_amp_options stop_on_nonfinite_train_score
    get_model train_step forward_step forward_init_hook forward_finish_hook CustomEngine
    random_seed log log_verbosity log_step_interval log_progress_interval log_progress_file check_unused_config_keys
    use_tensorboard tensorboard_opts
    use_tensorflow backend target extern_data num_inputs num_outputs
    output_file use_horovod torch_distributed tf_log_dir forward_override_hdf_output
    """.split())
# Of these, i6_core's jobs write some that mean nothing for a PyTorch runtime and are accepted as Mini-RETURNN
# accepts them: `target` (TF's default loss target), `tf_log_dir` (TensorBoard folder of TF),
# `forward_override_hdf_output` (TF's forward_to_hdf); `output_file` is read by task compute_priors.

_SUPPORTED_BACKENDS = ("torch",)


def check_unsupported_keys(config: Config) -> None:
    """Raises for keys that ask for something this runtime does not do (rather than silently doing less)."""
    backend = config.value("backend", None)
    if backend is not None and backend not in _SUPPORTED_BACKENDS:
        raise ConfigError(
            f"backend = {backend!r} {config.origin('backend')}: this runtime runs PyTorch (Mini-RETURNN) configs only; "
            "set backend = 'torch' (i6_core's ReturnnTrainingJob needs it set)"
        )
    if config.bool("use_tensorflow", False):
        raise ConfigError(
            f"use_tensorflow = True {config.origin('use_tensorflow')}: "
            "this runtime runs PyTorch (Mini-RETURNN) configs only"
        )
