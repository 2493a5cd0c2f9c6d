"""Serializers that put model code into a config: ``ReturnnConfig(python_epilog=[Collection([...])])``, or a
serializer alone (``python_epilog=[Network(...)]``, as returnn_common's README writes it).

Code that imports model code (:class:`Import`, :class:`PartialImport`, :class:`Network`, :class:`CodeFromFunction`)
brings the ``sys.path`` setup its imports need (this package's root and Sisyphus' recipe folder) where it stands
alone; inside a :class:`Collection`, which writes that setup once for all its objects, it writes only its own code
(:meth:`SerializerObject.own_code`).

Hashes are built from the same inputs as i6_experiments' serializers of the same name and arguments (dotted
import paths and keyword arguments, never file contents or absolute paths), so a setup moved to these classes
keeps its job hashes.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import string
import textwrap
from types import FunctionType
from typing import Any, Dict, List, Optional, Sequence, Union

from sisyphus.delayed_ops import DelayedBase
from sisyphus.hash import short_hash, sis_hash_helper

from .launch import PACKAGE_ROOT


class SerializerObject(DelayedBase):
    """A piece of config code; ``use_for_hash = False`` keeps it out of the hash.

    Subclasses write their code in :meth:`own_code`; :meth:`get` (what i6_core's ReturnnConfig writes for an object in
    python_epilog) adds what the code needs to run alone, :class:`Collection` takes :meth:`own_code` of each object.
    """

    use_for_hash = True

    def __init__(self) -> None:
        super().__init__(None)

    def own_code(self) -> str:
        """This object's own code, without any ``sys.path`` setup (what a :class:`Collection` writes of it)."""
        raise NotImplementedError

    def get(self) -> str:
        """The code this object writes into the config where it stands alone."""
        return self.own_code()


class _ImportingObject(SerializerObject):
    """Code that imports model code: alone in a config it first puts the import path on ``sys.path`` (idempotent
    inserts, so several such objects in one python_epilog add each folder once); its hash is its subclass's."""

    def get(self) -> str:
        """The ``sys.path`` setup of the import path, then this object's own code."""
        return import_path_code(import_paths(), idempotent=True) + self.own_code()


class Import(_ImportingObject):
    """``from package.module import name [as import_as]`` for a module-level function or class.

    :param code_object_path: dotted path (or the object itself) of a module-level function or class
    :param import_as: name in the config, e.g. ``get_model``
    :param unhashed_package_root: a dotted prefix of the path left out of the hash (moving a package keeps it)
    :param use_for_hash: if False, the import does not count for the hash of a :class:`Collection`
    :param ignore_import_as_for_hash: hash only the path, not ``import_as``
    """

    def __init__(
        self,
        code_object_path: Union[str, FunctionType, Any],
        *,
        unhashed_package_root: Optional[str] = None,
        import_as: Optional[str] = None,
        use_for_hash: bool = True,
        ignore_import_as_for_hash: bool = False,
    ):
        super().__init__()
        if not isinstance(code_object_path, str):
            code_object_path = f"{code_object_path.__module__}.{code_object_path.__qualname__}"
        _check_importable(code_object_path)
        self.object_name = code_object_path.split(".")[-1]
        self.module = ".".join(code_object_path.split(".")[:-1])
        self.code_object = code_object_path
        if unhashed_package_root:
            if not code_object_path.startswith(unhashed_package_root):
                raise ValueError(
                    f"unhashed_package_root {unhashed_package_root!r} is no prefix of {code_object_path!r}"
                )
            self.code_object = code_object_path[len(unhashed_package_root) :]
        self.import_as = import_as
        self.use_for_hash = use_for_hash
        self.ignore_import_as_for_hash = ignore_import_as_for_hash

    def own_code(self) -> str:
        alias = f" as {self.import_as}" if self.import_as else ""
        return f"from {self.module} import {self.object_name}{alias}\n"

    def _sis_hash(self) -> bytes:
        if self.import_as and not self.ignore_import_as_for_hash:
            return sis_hash_helper({"code_object": self.code_object, "import_as": self.import_as})
        return sis_hash_helper(self.code_object)


class PartialImport(Import):
    """A function with fixed keyword arguments, e.g. ``get_model`` with model hyper-parameters.

    :param hashed_arguments: fixed arguments that count for the hash
    :param unhashed_arguments: fixed arguments that do not (e.g. a debug flag)
    """

    TEMPLATE = textwrap.dedent("""\
        ${OBJECT_NAME} = __import__("functools").partial(
            __import__("${IMPORT_PATH}", fromlist=["${IMPORT_NAME}"]).${IMPORT_NAME},
            **${KWARGS}
        )
        """)

    def __init__(
        self,
        *,
        code_object_path: Union[str, FunctionType, Any],
        unhashed_package_root: Optional[str],
        hashed_arguments: Dict[str, Any],
        unhashed_arguments: Dict[str, Any],
        import_as: Optional[str] = None,
        use_for_hash: bool = True,
        ignore_import_as_for_hash: bool = False,
    ):
        super().__init__(
            code_object_path,
            import_as=import_as,
            unhashed_package_root=unhashed_package_root,
            use_for_hash=use_for_hash,
            ignore_import_as_for_hash=ignore_import_as_for_hash,
        )
        self.hashed_arguments = hashed_arguments
        self.unhashed_arguments = unhashed_arguments

    def own_code(self) -> str:
        from i6_core.util import instanciate_delayed

        arguments = {**self.unhashed_arguments, **self.hashed_arguments}
        return string.Template(self.TEMPLATE).substitute(
            KWARGS=repr(instanciate_delayed(arguments)),
            IMPORT_PATH=self.module,
            IMPORT_NAME=self.object_name,
            OBJECT_NAME=self.import_as or self.object_name,
        )

    def _sis_hash(self) -> bytes:
        return sis_hash_helper({"import": super()._sis_hash(), "hashed_arguments": self.hashed_arguments})


class ExplicitHash(SerializerObject):
    """Writes nothing; its value goes into the hash (e.g. to version a setup by hand)."""

    def __init__(self, hash: Any):  # noqa: A002 - the argument name of the i6_experiments class
        super().__init__()
        self.hash = hash

    def own_code(self) -> str:
        return ""

    def _sis_hash(self) -> bytes:
        return sis_hash_helper(self.hash)


class NonhashedCode(SerializerObject):
    """Code written as it is, not hashed."""

    use_for_hash = False

    def __init__(self, code: str):
        super().__init__()
        self.code = code

    def own_code(self) -> str:
        return self.code

    def _sis_hash(self) -> bytes:
        raise RuntimeError("NonhashedCode must not be hashed")


class CodeFromFunction(_ImportingObject):
    """The source of a function, exposed in the config as `name`.

    :param hash_full_python_code: hash the code itself instead of module and qualified name
    """

    def __init__(self, name: str, func: FunctionType, *, hash_full_python_code: bool = False):
        super().__init__()
        self.name = name
        self.func = func
        self.hash_full_python_code = hash_full_python_code
        self._func_code = inspect.getsource(func)
        if func.__name__ == name:
            self._code = self._func_code
        else:  # keep the function's own name out of the config's namespace
            code_hash = short_hash(self._func_code)
            self._code = (
                f"def _{name}_{code_hash}():\n"
                + textwrap.indent(self._func_code, "    ")
                + f"\n    return {func.__name__}\n{name} = _{name}_{code_hash}()\n"
            )

    def own_code(self) -> str:
        return self._code

    def _sis_hash(self) -> bytes:
        if self.hash_full_python_code:
            return sis_hash_helper((self.name, self._func_code))
        return sis_hash_helper((self.name, f"{self.func.__module__}.{self.func.__qualname__}"))


class Network(_ImportingObject):
    """``get_model``, ``train_step`` / ``forward_step`` and hooks that call imported model code with fixed kwargs.

    :param model: dotted path of the model class or constructor, called as ``model(epoch=, step=, **net_kwargs)``
        or, if it takes no ``epoch``, as ``model(**net_kwargs)``
    :param net_kwargs: hyper-parameters of the model (hashed)
    :param train_step: dotted path of the train step function (exposed as ``train_step``)
    :param forward_step: dotted path of the forward step (``forward_step``), with optional hooks
    :param forward_init_hook: dotted path exposed as ``forward_init_hook``
    :param forward_finish_hook: dotted path exposed as ``forward_finish_hook``
    """

    TEMPLATE = textwrap.dedent("""\
        network_kwargs = ${NETWORK_KWARGS}


        def get_model(*, epoch, step, **kwargs):
            import inspect as _inspect
            from ${MODEL_MODULE} import ${MODEL_NAME} as _model

            if "epoch" in _inspect.signature(_model).parameters:
                return _model(epoch=epoch, step=step, **network_kwargs)
            return _model(**network_kwargs)
        """)

    def __init__(
        self,
        model: str,
        net_kwargs: Dict[str, Any],
        *,
        train_step: Optional[str] = None,
        forward_step: Optional[str] = None,
        forward_init_hook: Optional[str] = None,
        forward_finish_hook: Optional[str] = None,
    ):
        super().__init__()
        _check_importable(model)
        self.model = model
        self.net_kwargs = net_kwargs
        self.functions = {
            name: Import(path, import_as=name)
            for name, path in (
                ("train_step", train_step),
                ("forward_step", forward_step),
                ("forward_init_hook", forward_init_hook),
                ("forward_finish_hook", forward_finish_hook),
            )
            if path is not None
        }

    def own_code(self) -> str:
        code = string.Template(self.TEMPLATE).substitute(
            NETWORK_KWARGS=repr(self.net_kwargs),
            MODEL_MODULE=".".join(self.model.split(".")[:-1]),
            MODEL_NAME=self.model.split(".")[-1],
        )
        return code + "".join(f.own_code() for f in self.functions.values())

    def _sis_hash(self) -> bytes:
        return sis_hash_helper(
            {"model": self.model, "net_kwargs": self.net_kwargs, "functions": list(self.functions.values())}
        )


class Collection(DelayedBase):
    """The serializer objects in order, after a ``sys.path`` setup that finds this package and the recipes.

    Hashed like i6_experiments' Collection: the hashed objects only (no paths).
    """

    def __init__(self, serializer_objects: List[SerializerObject], *, extra_paths: Optional[List[str]] = None):
        super().__init__(None)
        self.serializer_objects = serializer_objects
        self.extra_paths = list(extra_paths or [])

    def get(self) -> str:
        paths = import_paths(self.extra_paths)
        return import_path_code(paths) + "".join(_code_of(obj) for obj in self.serializer_objects)

    def _sis_hash(self) -> bytes:
        return sis_hash_helper({"delayed_objects": [o for o in self.serializer_objects if o.use_for_hash]})


def import_paths(extra_paths: Sequence[str] = ()) -> List[str]:
    """Where config code imports from on the node, first first: this package's root, `extra_paths`, the recipes."""
    return [PACKAGE_ROOT, *extra_paths, *_recipe_paths()]


def import_path_code(paths: Sequence[str], *, idempotent: bool = False) -> str:
    """Code that puts `paths` at the front of ``sys.path`` in this order; `idempotent`: leaves a path that is
    already there where it is (a config with several stand-alone serializers adds each folder once)."""
    lines = ["import sys\n"]
    for path in reversed(paths):
        if idempotent:
            lines.append(f"if {path!r} not in sys.path:\n    sys.path.insert(0, {path!r})\n")
        else:
            lines.append(f"sys.path.insert(0, {path!r})\n")
    return "".join(lines)


def _code_of(obj: Any) -> str:
    """The code of one object of a :class:`Collection`: its own code (the Collection set the path up); ``get()`` of
    other objects (i6_core's or a user's DelayedBase, a subclass written before ``own_code`` that defines ``get``)."""
    if isinstance(obj, SerializerObject) and type(obj).own_code is not SerializerObject.own_code:
        return obj.own_code()
    return obj.get()


def _recipe_paths() -> List[str]:
    """Where recipe code is imported from (Sisyphus' recipe folder), so imported model code is found on nodes."""
    try:
        from sisyphus import global_settings as gs

        return [os.path.abspath(os.path.join(gs.BASE_DIR, gs.RECIPE_PREFIX))]
    except Exception:
        return []


def _check_importable(dotted_path: str) -> None:
    """A serializer path that does not exist fails when the config is built, naming the path.

    The module is located and parsed, not imported: model code imports ``returnn.*`` names that exist only
    inside the runtime process.
    """
    module_name, _, name = dotted_path.rpartition(".")
    try:
        spec = importlib.util.find_spec(module_name) if module_name else None
    except (ImportError, ValueError) as exc:
        raise ImportError(
            f"Serializer import path {dotted_path!r}: cannot find module {module_name!r}: {exc}"
        ) from None
    if spec is None:
        raise ImportError(f"Serializer import path {dotted_path!r}: no module {module_name!r}")
    if not spec.origin or not spec.origin.endswith(".py"):
        return  # compiled or namespace modules: nothing to parse
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=spec.origin)
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    if name not in defined:
        raise ImportError(f"Serializer import path {dotted_path!r}: {spec.origin} defines no {name!r}")
