"""Checkpoint files in RETURNN's layout: ``<model>.NNN.pt`` ({"model", "epoch", "step"}) and ``<model>.NNN.opt.pt``.

The file names come from :mod:`i6_minireturnn.file_formats` (shared with the Sisyphus jobs; importable from here).
"""

from __future__ import annotations

import copy
import glob
import os
import re
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, Set, Tuple

import torch

from ..atomic_file import is_temp_file, save_torch_atomic
from ..cache_manager import cached_path
from ..config_rules import parse_bool
from ..errors import CheckpointError, ConfigError
from ..file_formats import MODEL_SUFFIX as MODEL_SUFFIX
from ..file_formats import OPTIMIZER_SUFFIX as OPTIMIZER_SUFFIX
from ..file_formats import epoch_prefix as epoch_prefix
from ..file_formats import model_path as model_path
from ..file_formats import optimizer_path as optimizer_path
from ..log import log

if TYPE_CHECKING:
    from ..config import Config


def existing_epochs(model_prefix: str) -> Dict[int, str]:
    """{epoch: model file} of the stored epochs; temp files of interrupted writes are not checkpoints."""
    if not model_prefix:
        return {}
    pattern = re.compile(re.escape(os.path.basename(model_prefix)) + r"\.(\d+)\.pt$")
    found = {}
    for path in glob.glob(glob.escape(model_prefix) + ".*.pt"):
        match = pattern.fullmatch(os.path.basename(path))
        if match and not is_temp_file(path):
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def remove_old_optimizer_states(model_prefix: str, *, keep_newest: int) -> None:
    """Deletes the optimizer files of all but the `keep_newest` newest stored epochs, and those whose model file is
    gone (a cleanup deletes the model file first)."""
    stored = sorted(existing_epochs(model_prefix))
    kept = set(stored[-keep_newest:])
    pattern = re.compile(re.escape(os.path.basename(model_prefix)) + r"\.(\d+)" + re.escape(OPTIMIZER_SUFFIX) + "$")
    for path in glob.glob(glob.escape(model_prefix) + ".*" + OPTIMIZER_SUFFIX):
        match = pattern.fullmatch(os.path.basename(path))
        if match and int(match.group(1)) not in kept and int(match.group(1)) < max(stored, default=0):
            os.remove(path)


def remove_stale_temp_files(model_prefix: str) -> None:
    """Deletes leftovers of writes that a killed run did not finish."""
    for path in glob.glob(glob.escape(model_prefix) + ".*"):
        if is_temp_file(path):
            try:
                os.remove(path)
            except FileNotFoundError:  # another process removed it meanwhile
                continue
            print(f"Removed unfinished file {path}", file=log.v3)


def checkpoint_file(path: str) -> str:
    """The file a ``load`` value points to: RETURNN allows the name with or without ``.pt``."""
    for candidate in (path, path + MODEL_SUFFIX):
        if os.path.isfile(candidate):
            return candidate
    raise CheckpointError(f"Checkpoint not found: {path!r} (also tried {path + MODEL_SUFFIX!r})")


def given_checkpoint(config: Config, key: str) -> str:
    """The checkpoint file that config key `key` (``load``, ``import_model_train_epoch1``) names, brought to the node
    through the cache manager like dataset files unless ``use_cache_manager = False``. Only input checkpoints come
    here: the run's own epoch files (``<model>.NNN.pt``) are written and resumed in place, never copied."""
    return cached_path(checkpoint_file(config.value(key)), enabled=caches_checkpoints(config))


def caches_checkpoints(config: Config) -> bool:
    """Whether input checkpoints go through the cache manager: top-level ``use_cache_manager``."""
    return config.bool("use_cache_manager")


def load_file(path: str, *, map_location: Any = "cpu") -> Any:
    """torch.load with an error that names the file when it is truncated or no checkpoint at all."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint not found: {path!r}") from None
    except Exception as exc:
        raise CheckpointError(
            f"Cannot read checkpoint {path!r} (truncated or not a torch checkpoint): {type(exc).__name__}: {exc}"
        ) from None


def load_model_checkpoint(path: str) -> Dict[str, Any]:
    """A model checkpoint dict with ``model`` (state dict), ``epoch`` and ``step``."""
    state = load_file(path)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path!r} is not a model checkpoint: expected a dict with 'model', 'epoch', 'step'")
    return state


def save_model(
    model_prefix: str, epoch: int, model: torch.nn.Module, step: int, extra: Optional[Dict[str, Any]] = None
) -> str:
    """Writes ``<model>.NNN.pt`` (RETURNN's ``model``, ``epoch``, ``step``, plus `extra` entries that readers of
    RETURNN checkpoints ignore); returns its path."""
    path = model_path(model_prefix, epoch)
    save_torch_atomic({"model": model.state_dict(), "epoch": epoch, "step": step, **(extra or {})}, path)
    print(f"Saved model {path}", file=log.v4)
    return path


def snapshot_model(
    model: torch.nn.Module, epoch: int, step: int, extra: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """What :func:`save_model` writes, copied to CPU now, so that it can be written later while training goes on."""
    return cpu_snapshot({"model": model.state_dict(), "epoch": epoch, "step": step, **(extra or {})})


def write_snapshot(state: Any, path: str, *, what: Optional[str] = None) -> None:
    """Writes a snapshot (:func:`snapshot_model`, an optimizer snapshot) atomically; logs `what` was saved."""
    save_torch_atomic(state, path)
    if what:
        print(f"Saved {what} {path}", file=log.v4)


def cpu_snapshot(obj: Any) -> Any:
    """A copy of `obj` for writing later: every tensor copied to CPU (a copy also on a CPU device, never a view of
    live parameters or optimizer state, which the next steps change), containers rebuilt, other values deep-copied.
    Tensors of the same memory (tied weights) stay one tensor in the copy, as torch.save stores them."""
    return _cpu_copy(obj, {})


def _cpu_copy(obj: Any, copies: Dict[Tuple, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = (obj.device, obj.untyped_storage().data_ptr(), obj.storage_offset(), obj.shape, obj.stride(), obj.dtype)
        if key not in copies:
            copies[key] = obj.detach().to("cpu", copy=True)
        return copies[key]
    if isinstance(obj, dict):
        result = type(obj)((key, _cpu_copy(value, copies)) for key, value in obj.items())
        if hasattr(obj, "_metadata"):  # a module state dict's versions, which torch.save stores with it
            result._metadata = copy.deepcopy(obj._metadata)
        return result
    if isinstance(obj, list):
        return [_cpu_copy(value, copies) for value in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_cpu_copy(value, copies) for value in obj)
    return copy.deepcopy(obj)


def load_state_into_model(
    model: torch.nn.Module, state_dict: Dict[str, Any], *, source: str, ignore_missing: bool = False
) -> None:
    """Loads parameters; missing ones are an error unless ignored, unexpected ones are reported."""
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"Checkpoint {source!r} does not fit the model: {exc}") from None
    if missing and not ignore_missing:
        raise CheckpointError(
            f"Checkpoint {source!r} lacks parameters of the model: {', '.join(missing[:10])}"
            + (" ..." if len(missing) > 10 else "")
            + " (set load_ignore_missing_vars = True to accept)"
        )
    if unexpected:
        print(f"Note: {source} has parameters the model does not use: {', '.join(unexpected)}", file=log.v4)


def preload_from_files(
    model: torch.nn.Module,
    options: Dict[str, Dict[str, Any]],
    *,
    init_for_train: bool,
    use_cache_manager: bool = True,
) -> None:
    """Applies the ``preload_from_files`` entries whose ``init_for_train`` flag equals `init_for_train`.

    The engine applies ``init_for_train`` entries when training starts fresh at epoch 1, the others in
    forward / eval runs (RETURNN's rule).
    Entries are applied in reverse key order so that, where two entries set a parameter, the first key wins.
    Each file goes through the cache manager; an entry's ``use_cache_manager`` overrides `use_cache_manager` (the
    config's top-level key).
    """
    if not isinstance(options, dict):
        raise ConfigError(f"preload_from_files must be a dict of dicts, got {type(options).__name__}")
    for key, opts in sorted(options.items(), reverse=True):
        if not isinstance(opts, dict) or "filename" not in opts:
            raise ConfigError(f"preload_from_files[{key!r}] must be a dict with a 'filename'")
        if bool(opts.get("init_for_train", False)) != init_for_train:
            continue
        print(f"Preloading {key!r} from {opts['filename']}", file=log.v3)
        cache = use_cache_manager if opts.get("use_cache_manager") is None else parse_bool(opts["use_cache_manager"])
        state = load_file(cached_path(checkpoint_file(opts["filename"]), enabled=bool(cache)))
        checkpoint_key = opts.get("checkpoint_key", "model")
        if checkpoint_key is not None:
            if not isinstance(state, dict) or checkpoint_key not in state:
                raise CheckpointError(f"{opts['filename']!r} has no entry {checkpoint_key!r} (preload {key!r})")
            state = state[checkpoint_key]
        prefix = opts.get("prefix", "")
        # Checkpoint names lack the prefix; adding it selects the model's parameters under the prefix.
        state = {prefix + name: value for name, value in state.items()}
        ignore = set(opts.get("ignore_params", ()))
        ignore_prefixes = tuple(opts.get("ignore_params_prefixes", ()))
        state = {
            n: v
            for n, v in state.items()
            if n not in ignore and not (ignore_prefixes and n.startswith(ignore_prefixes))
        }
        for new_name, old_name in opts.get("var_name_mapping", {}).items():
            if old_name not in state:
                raise CheckpointError(f"var_name_mapping of preload {key!r}: {old_name!r} is not in the checkpoint")
            state[new_name] = state.pop(old_name)
        try:
            missing, _ = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise CheckpointError(f"Preload {key!r} from {opts['filename']!r} does not fit the model: {exc}") from None
        missing_here = [n for n in missing if n.startswith(prefix)]
        if missing_here and not opts.get("ignore_missing", False):
            raise CheckpointError(
                f"Preload {key!r} from {opts['filename']!r} lacks parameters: {', '.join(missing_here[:10])}"
                " (set ignore_missing=True in its options to accept)"
            )


def epochs_to_keep(
    epochs: Iterable[int],
    scores: Dict[int, Dict[str, float]],
    *,
    keep: Iterable[int] = (),
    keep_last_n: int = 2,
    keep_best_n: int = 4,
) -> Set[int]:
    """Which stored epochs survive a cleanup: ``keep``, the last n, the best n per score, and always the newest."""
    epochs = sorted(epochs)
    if not epochs:
        return set()
    kept = set(keep) | set(epochs[-max(keep_last_n, 1) :])
    score_keys = sorted({k for e in epochs for k in scores.get(e, {})})
    for key in score_keys:
        values = [(scores[e][key], e) for e in epochs if key in scores.get(e, {})]
        if len({v for v, _ in values}) <= 1:
            continue  # a constant score tells nothing
        kept.update(e for _, e in sorted(values)[:keep_best_n])
    return kept & set(epochs) | {epochs[-1]}


def cleanup_old_models(model_prefix: str, options: Any, scores: Dict[int, Dict[str, float]]) -> Set[int]:
    """Deletes model and optimizer files of epochs not kept; returns the deleted epochs."""
    if options is True:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"cleanup_old_models must be True or a dict, got {options!r}")
    unknown = set(options) - {"keep", "keep_last_n", "keep_best_n"}
    if unknown:
        raise ConfigError(
            f"cleanup_old_models has unknown option(s) {sorted(unknown)}; valid: keep, keep_last_n, keep_best_n"
        )
    stored = existing_epochs(model_prefix)
    kept = epochs_to_keep(
        stored,
        scores,
        keep=options.get("keep", ()) or (),
        keep_last_n=options.get("keep_last_n", 2),
        keep_best_n=options.get("keep_best_n", 4),
    )
    deleted = set()
    for epoch in sorted(set(stored) - kept):
        for path in (model_path(model_prefix, epoch), optimizer_path(model_prefix, epoch)):
            if os.path.exists(path):
                os.remove(path)
        deleted.add(epoch)
    if deleted:
        print(f"Cleanup: kept epochs {sorted(kept)}, deleted {sorted(deleted)}", file=log.v3)
    return deleted


def remove_unneeded(model_prefix: str, cleanup_options: Any, scores: Dict[int, Dict[str, float]]) -> None:
    """The engine's cleanup after an epoch: optimizer states but the two newest (enough to resume if one is damaged),
    and with ``cleanup_old_models`` (`cleanup_options`) the epochs it does not keep."""
    remove_old_optimizer_states(model_prefix, keep_newest=2)
    if cleanup_options:
        cleanup_old_models(model_prefix, cleanup_options, scores)
