"""RETURNN's NumbersDict: a dict of numbers with element-wise arithmetic and an optional broadcast value."""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Iterator, Optional, Union

Number = Union[int, float]


class NumbersDict:
    """``NumbersDict({"data": 3}) + 1 == NumbersDict({"data": 4}, broadcast_value=1)``.

    ``value`` is the broadcast value used for keys the dict does not have (None: no broadcast).
    """

    def __init__(
        self,
        auto_convert: Any = None,
        numbers_dict: Optional[Dict[str, Number]] = None,
        broadcast_value: Optional[Number] = None,
    ):
        if isinstance(auto_convert, NumbersDict):
            numbers_dict, broadcast_value = dict(auto_convert.dict), auto_convert.value
        elif isinstance(auto_convert, dict):
            numbers_dict = dict(auto_convert)
        elif auto_convert is not None:
            broadcast_value = auto_convert
        self.dict: Dict[str, Number] = dict(numbers_dict or {})
        self.value = broadcast_value

    @property
    def max_value(self) -> Optional[Number]:
        """Largest value (dict values and broadcast value)."""
        values = list(self.dict.values()) + ([self.value] if self.value is not None else [])
        return max(values) if values else None

    @property
    def min_value(self) -> Optional[Number]:
        """Smallest value (dict values and broadcast value)."""
        values = list(self.dict.values()) + ([self.value] if self.value is not None else [])
        return min(values) if values else None

    def keys(self):
        return self.dict.keys()

    def values(self):
        return list(self.dict.values()) + ([self.value] if self.value is not None else [])

    def items(self):
        return self.dict.items()

    def has_values(self) -> bool:
        """Whether there is any value."""
        return bool(self.dict) or self.value is not None

    def copy(self) -> NumbersDict:
        return NumbersDict(self)

    def __getitem__(self, key: str) -> Optional[Number]:
        return self.dict.get(key, self.value)

    def __setitem__(self, key: str, value: Number) -> None:
        self.dict[key] = value

    def __delitem__(self, key: str) -> None:
        del self.dict[key]

    def __contains__(self, key: str) -> bool:
        return key in self.dict

    def __iter__(self) -> Iterator[str]:
        return iter(self.dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.dict.get(key, self.value if self.value is not None else default)

    def _combine(self, other: Any, op: Callable[[Any, Any], Any]) -> NumbersDict:
        other = other if isinstance(other, NumbersDict) else NumbersDict(other)
        result = NumbersDict()
        for key in set(self.dict) | set(other.dict):
            a, b = self[key], other[key]
            if a is None or b is None:
                result.dict[key] = a if b is None else b
            else:
                result.dict[key] = op(a, b)
        if self.value is not None and other.value is not None:
            result.value = op(self.value, other.value)
        return result

    def __add__(self, other):
        return self._combine(other, operator.add)

    __radd__ = __add__

    def __sub__(self, other):
        return self._combine(other, operator.sub)

    def __mul__(self, other):
        return self._combine(other, operator.mul)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._combine(other, operator.truediv)

    def __floordiv__(self, other):
        return self._combine(other, operator.floordiv)

    def __neg__(self) -> NumbersDict:
        return NumbersDict(
            {k: -v for k, v in self.dict.items()}, broadcast_value=None if self.value is None else -self.value
        )

    def __bool__(self) -> bool:
        return any(self.values())

    def __eq__(self, other: Any) -> bool:
        other = other if isinstance(other, NumbersDict) else NumbersDict(other)
        return self.dict == other.dict and self.value == other.value

    def any_compare(self, other: Any, cmp: Callable[[Any, Any], bool]) -> bool:
        """Whether `cmp` holds for any key (keys of both, with broadcast)."""
        other = other if isinstance(other, NumbersDict) else NumbersDict(other)
        keys = set(self.dict) | set(other.dict)
        pairs = [(self[k], other[k]) for k in keys]
        if self.value is not None and other.value is not None:
            pairs.append((self.value, other.value))
        return any(cmp(a, b) for a, b in pairs if a is not None and b is not None)

    def __gt__(self, other):
        return self.any_compare(other, operator.gt)

    def __ge__(self, other):
        return self.any_compare(other, operator.ge)

    def __lt__(self, other):
        return self.any_compare(other, operator.lt)

    def __le__(self, other):
        return self.any_compare(other, operator.le)

    @classmethod
    def max(cls, items) -> NumbersDict:
        """Element-wise maximum of several NumbersDicts / numbers."""
        return cls._reduce(items, max)

    @classmethod
    def min(cls, items) -> NumbersDict:
        """Element-wise minimum of several NumbersDicts / numbers."""
        return cls._reduce(items, min)

    @classmethod
    def _reduce(cls, items, op: Callable[[Any, Any], Any]) -> NumbersDict:
        result = None
        for item in items:
            result = NumbersDict(item) if result is None else result._combine(item, op)
        return result if result is not None else NumbersDict()

    def __repr__(self) -> str:
        if self.value is None:
            return f"NumbersDict({self.dict!r})"
        if not self.dict:
            return f"NumbersDict({self.value!r})"
        return f"NumbersDict(numbers_dict={self.dict!r}, broadcast_value={self.value!r})"
