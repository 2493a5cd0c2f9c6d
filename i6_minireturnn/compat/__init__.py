"""The ``returnn.*`` import names that existing Mini-RETURNN model files and hooks use, inside the runtime process.

:func:`install` makes ``import returnn...`` resolve to the modules under ``i6_minireturnn/compat/returnn`` (also
where another RETURNN is installed); :func:`uninstall` restores what was there. Mainline-only APIs
(``returnn.frontend``, ``returnn.tensor``, ...) fail with one message saying that this runtime takes the
Mini-RETURNN API.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import traceback
from typing import TYPE_CHECKING, Any, Dict, Optional

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import Config

_TARGET = __name__ + ".returnn"

# returnn module name -> what it offers here (listed in the README)
PROVIDED: Dict[str, str] = {
    "returnn": "the package",
    "returnn.torch": "package",
    "returnn.torch.context": "get_run_ctx, RunCtx, Loss, _run_ctx (set by export scripts)",
    "returnn.torch.engine": "Engine (subclass it as CustomEngine), EngineBase, TrainCtx (import only)",
    "returnn.torch.updater": "Updater (one per optimizer in custom engines), get_optimizer_class",
    "returnn.torch.util": "package (Mini-RETURNN ships only diagnose_gpu)",
    "returnn.torch.util.diagnose_gpu": "print_available_devices, print_using_cuda_device_report, diagnose_no_gpu",
    "returnn.datasets": "Dataset, init_dataset",
    "returnn.datasets.hdf": "SimpleHDFWriter, HDFDataset",
    "returnn.datasets.util": "package",
    "returnn.datasets.util.hdf": "SimpleHDFWriter, HDF_SEQ_LENGTHS_KEY, HDF_INPUT_PATT_SIZE_KEY, HDF_TIMES_KEY",
    "returnn.datasets.util.vocabulary": (
        "Vocabulary (create_vocab, create_vocab_from_labels), BytePairEncoding, SentencePieces, CharacterTargets, "
        "Utf8ByteTargets"
    ),
    "returnn.util": "NumbersDict",
    "returnn.util.basic": "cf, NumbersDict, NotSpecified, hms, human_size, model_epoch_from_filename, ...",
    "returnn.util.math": "PiecewiseLinear",
    "returnn.datasets.basic": "Dataset, init_dataset, get_dataset_class",
    "returnn.datasets.lm": "LmDataset, TranslationDataset",
    "returnn.datasets.audio": "OggZipDataset",
    "returnn.datasets.meta": "MetaDataset, ConcatDataset, CombinedDataset, ConcatSeqsDataset",
    "returnn.datasets.generating": "DummyDataset, Task12AXDataset, ... (generated datasets)",
    "returnn.log": "log (log.v1 ... log.v5)",
    "returnn.config": "Config, get_global_config",
}

MAINLINE_ONLY = ("returnn.frontend", "returnn.tensor", "returnn.tf", "returnn.torch.frontend", "returnn.forward_iface")


class MainlineApiError(ImportError, UserError):
    """An import of a RETURNN API that Mini-RETURNN (and so this runtime) does not have."""


def mainline_message(what: str) -> str:
    """The one message for configs and model files written for RETURNN mainline."""
    return (
        f"{what} belongs to RETURNN's mainline API; this runtime takes the Mini-RETURNN API "
        "(train_step(*, model, data, run_ctx, **kwargs) with torch tensors, run_ctx.mark_as_loss). "
        f"Available returnn names here: {', '.join(sorted(PROVIDED))}"
    )


def _importer() -> str:
    """File and line of the code doing the import (the first frame outside the import machinery)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "importlib" not in frame.filename and not frame.filename.startswith("<frozen"):
            return f" (in {frame.filename}, line {frame.lineno})"
    return ""


class _AliasLoader(importlib.abc.Loader):
    """Hands out an already imported compat module under its ``returnn`` name."""

    def __init__(self, module: Any):
        self.module = module

    def create_module(self, spec):  # noqa: ANN001 - importlib's protocol
        return self.module

    def exec_module(self, module) -> None:  # noqa: ANN001
        pass


class _CompatFinder(importlib.abc.MetaPathFinder):
    """Answers every ``returnn.*`` import: our modules, or a clear error."""

    def find_spec(self, fullname: str, path, target=None):  # noqa: ANN001 - importlib's protocol
        if fullname != "returnn" and not fullname.startswith("returnn."):
            return None
        if fullname in PROVIDED:
            module = importlib.import_module(_TARGET + fullname[len("returnn") :])
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), origin=module.__file__)
        if fullname.startswith(MAINLINE_ONLY):
            raise MainlineApiError(mainline_message(f"import {fullname}{_importer()}"))
        raise MainlineApiError(
            f"import {fullname}{_importer()}: this runtime provides only these returnn modules: "
            + ", ".join(sorted(PROVIDED))
        )


_finder: Optional[_CompatFinder] = None
_saved_modules: Dict[str, object] = {}


def install() -> None:
    """Makes ``returnn`` resolve to the compat modules in this process (idempotent)."""
    global _finder
    if _finder is not None:
        return
    _saved_modules.clear()
    for name in [n for n in sys.modules if n == "returnn" or n.startswith("returnn.")]:
        _saved_modules[name] = sys.modules.pop(name)  # another RETURNN imported earlier: hide it
    _finder = _CompatFinder()
    sys.meta_path.insert(0, _finder)
    for name in PROVIDED:  # import eagerly so that `import returnn.x.y` and attribute access both work
        sys.modules[name] = importlib.import_module(_TARGET + name[len("returnn") :])


def uninstall() -> None:
    """Removes the compat names and restores any RETURNN modules that were imported before."""
    global _finder
    if _finder is None:
        return
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None
    for name in [n for n in sys.modules if n == "returnn" or n.startswith("returnn.")]:
        del sys.modules[name]
    sys.modules.update(_saved_modules)
    _saved_modules.clear()


def check_step_functions(config: Config) -> None:
    """Before anything runs: step functions written for RETURNN mainline (taking ``extern_data``) fail with one
    clear message, and step functions and hooks whose signature cannot take the runtime's call (no ``**kwargs``,
    positional-only parameters, ...) with a message naming the function and what to change."""
    from ..step_functions import check_config_functions

    for key in ("train_step", "forward_step"):
        func = config.typed_value(key, None)
        if callable(func):
            try:
                params = inspect.signature(func).parameters
            except (TypeError, ValueError):
                continue
            if "extern_data" in params:
                raise MainlineApiError(mainline_message(f"{key}(..., extern_data, ...) in {config.where()}"))
    check_config_functions(config)


def installed() -> bool:
    """Whether the compat names are active."""
    return _finder is not None
