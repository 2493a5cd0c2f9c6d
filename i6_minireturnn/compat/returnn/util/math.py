"""``returnn.util.math``: ``PiecewiseLinear``, which i6 setups' dynamic learning-rate functions (and other schedules
in config files) build their curves with."""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import numpy as np

Number = Union[int, float]


class PiecewiseLinear:
    """``f(x)`` through the points ``{x: y}`` of `values`: linear between neighbouring points, the first (last) y
    before the first (after the last) point.

    Called with one positional argument, or with `kw_name` given, with that keyword argument alone;
    `ignore_other_kwargs` accepts further keyword arguments (e.g. all those a ``dynamic_learning_rate`` gets).
    """

    def __init__(
        self, values: Dict[Number, Number], *, kw_name: Optional[str] = None, ignore_other_kwargs: bool = False
    ):
        if not isinstance(values, dict) or not values:
            raise ValueError(f"PiecewiseLinear needs a non-empty dict {{x: y}} of points, got {values!r}")
        self._points = sorted(values.items())
        self._xs = np.array([x for x, _ in self._points], dtype=np.float64)
        self._ys = np.array([y for _, y in self._points], dtype=np.float64)
        self._kw_name = kw_name
        self._ignore_other_kwargs = ignore_other_kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._kw_name is None:
            if len(args) != 1:
                raise TypeError(f"{self!r} takes one positional argument, got {len(args)}")
            x = args[0]
        else:
            if args:
                raise TypeError(f"{self!r} takes the keyword argument {self._kw_name!r} only, got positional {args}")
            if self._kw_name not in kwargs:
                raise TypeError(f"{self!r} needs the keyword argument {self._kw_name!r}")
            x = kwargs.pop(self._kw_name)
        if kwargs and not self._ignore_other_kwargs:
            raise TypeError(f"{self!r} got unexpected keyword arguments {sorted(kwargs)}")
        result = np.interp(x, self._xs, self._ys)
        return float(result) if np.ndim(result) == 0 else result

    # The state is the constructor's arguments (as RETURNN's class keeps it), so pickles and Sisyphus hashes of
    # configs holding one do not depend on the arrays kept for the interpolation.
    def __getstate__(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"values": dict(self._points)}
        if self._kw_name is not None:
            state["kw_name"] = self._kw_name
        if self._ignore_other_kwargs:
            state["ignore_other_kwargs"] = True
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        state = self.__getstate__()
        arguments = [repr(state.pop("values"))] + [f"{key}={value!r}" for key, value in state.items()]
        return f"PiecewiseLinear({', '.join(arguments)})"
