"""Declared parameters: one table per node with type, default, range or choices and the
description that `ros2 param describe` shows. Values are validated when declared (from the
YAML) and on every set; an invalid value is rejected with the reason. An integer given for a
double parameter (``focal_length_px: 600``) is taken as that double, as rclcpp users expect."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.parameter import Parameter

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    range: tuple | None = None              # (min, max) inclusive, numbers only
    choices: Sequence[str] | None = None    # strings only
    read_only: bool = False                 # fixed after start-up
    check: Callable[[Any], str | None] | None = None  # returns the reason when invalid

    def descriptor(self) -> ParameterDescriptor:
        text = self.description
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        d = ParameterDescriptor(name=self.name, type=_TYPES[type(self.default)], description=text,
                                read_only=self.read_only)
        if self.range is not None and isinstance(self.default, int) and not isinstance(self.default, bool):
            d.integer_range = [IntegerRange(from_value=int(self.range[0]), to_value=int(self.range[1]), step=0)]
        elif self.range is not None:
            d.floating_point_range = [FloatingPointRange(from_value=float(self.range[0]),
                                                         to_value=float(self.range[1]), step=0.0)]
        return d

    def reason_invalid(self, value) -> str | None:
        """Checks beyond the descriptor (rclpy itself enforces type, range and read-only)."""
        if self.range is not None and not (self.range[0] <= value <= self.range[1]):
            return f"{self.name} must be in [{self.range[0]}, {self.range[1]}], got {value}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {list(self.choices)}, got {value!r}"
        if self.check is not None:
            reason = self.check(value)
            if reason:
                return f"{self.name}: {reason}"
        return None


class ParameterSet:
    """Declares a table of ``Param`` on a node and keeps ``values`` current."""

    def __init__(self, node, params: Sequence[Param], on_change: Callable[[dict], None] | None = None):
        self._node = node
        self._params = {p.name: p for p in params}
        self._on_change = on_change
        self.values: dict[str, Any] = {}
        # Overrides (YAML, -p) are read at declaration, which runs no pre-set callback: coerce them
        # here. rclpy keeps them in this attribute (rclpy/node.py, declare_parameters).
        overrides = getattr(node, "_parameter_overrides", {})
        for name, param in list(overrides.items()):
            if name in self._params:
                overrides[name] = self._coerced(param)
        for p in params:
            value = node.declare_parameter(p.name, p.default, p.descriptor()).value
            reason = p.reason_invalid(value)
            if reason:
                raise ValueError(f"invalid parameter value: {reason}")
            self.values[p.name] = value
        node.add_pre_set_parameters_callback(lambda parameters: [self._coerced(q) for q in parameters])
        node.add_on_set_parameters_callback(self._validate)

    def __getitem__(self, name):
        return self.values[name]

    def _coerced(self, param: Parameter) -> Parameter:
        """An integer for a double parameter becomes that double; anything else is left alone
        (rclpy then rejects a wrong type with its reason)."""
        spec = self._params.get(param.name)
        if spec is not None and type(spec.default) is float and param.type_ == Parameter.Type.INTEGER:
            return Parameter(param.name, Parameter.Type.DOUBLE, float(param.value))
        return param

    def _validate(self, parameters) -> SetParametersResult:
        try:
            return self._checked(parameters)
        except Exception as exc:  # a failing on_change must not take the parameter service down
            return SetParametersResult(successful=False, reason=f"{type(exc).__name__}: {exc}")

    def _checked(self, parameters) -> SetParametersResult:
        changed = {}
        for param in parameters:
            spec = self._params.get(param.name)
            if spec is None:
                continue
            reason = spec.reason_invalid(param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            changed[param.name] = param.value
        self.values.update(changed)
        if changed and self._on_change is not None:
            self._on_change(changed)
        return SetParametersResult(successful=True)


def sha256_check(value: str) -> str | None:
    if value and (len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value)):
        return "must be empty or 64 hexadecimal digits (a SHA-256)"
    return None


def frame_prefix_check(value: str) -> str | None:
    if not value or any(c in value for c in " /#"):
        return "must be a non-empty frame-name prefix without spaces, '/' or '#'"
    return None
