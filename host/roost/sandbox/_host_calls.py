"""Linking host calls with arguments and results converted by hand.

wasmtime-py's own trampoline for a host function reflects on the function's type at every
call (the parameter and result types, and for a ``result`` or ``option`` the types of its
cases, each a C API round trip) and lifts a ``list<u8>`` one byte, one Python call, at a
time: an LLM request of a few KiB costs milliseconds of the GIL before the call even
starts. Here each linked function reads its type once, on its first call, into a plan of
converters; ``list<u8>`` and ``string`` arguments are lifted with one copy, and the results
our capabilities return (``list<u8>``, ``option<list<u8>>``, ``result<T, string>``, scalars)
are lowered directly. Any other type goes through wasmtime-py's converters.

A host call's arguments belong to the callee (it frees them); its result is written into
the slot wasmtime passes and freed by wasmtime. Like :mod:`._values`, this relies on
wasmtime-py's ctypes bindings (``wasmtime._ffi``), which are pinned with wasmtime.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import byref
from typing import Any

from wasmtime import StoreContext, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime._slab import Slab
from wasmtime.component import (
    F64,
    U8,
    U32,
    U64,
    Bool,
    ListType,
    OptionType,
    ResultType,
    String,
    ValType,
    Variant,
)
from wasmtime.component._enter import catch_exceptions
from wasmtime.component._linker import LinkerInstance
from wasmtime.component._types import FuncType

from ._values import lift_bytes, lower_bytes

_Lift = Callable[[Any], Any]
"""Takes a C argument value (and frees what it owns); returns the Python value."""
_Lower = Callable[[Any, Any, Any], None]
"""(store context pointer, C value slot, Python value): writes the result into the slot."""

_FUNCTIONS: Slab[_HostFunction] = Slab()


class _HostFunction:
    """One linked host call and, after its first call, its plan of converters."""

    __slots__ = ("call", "plan")

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call
        self.plan: tuple[list[_Lift], _Lower | None] | None = None

    def invoke(self, context: Any, ty: Any, args: Any, nargs: int, results: Any) -> None:
        plan = self.plan
        if plan is None:
            # Owned by the caller: the type is not deleted with this object.
            plan = self.plan = _plan(FuncType._from_ptr(ty, owner=context))
        lifts, lower = plan
        if nargs != len(lifts):
            raise WasmtimeError(f"host call expected {len(lifts)} arguments, got {nargs}")
        value = self.call(*[lift(args[i]) for i, lift in enumerate(lifts)])
        if lower is not None:
            lower(context, results[0], value)


def add_host_function(instance: LinkerInstance, name: str, call: Callable[..., Any]) -> None:
    """Link ``call`` (taking the WIT arguments, returning the WIT result) as ``name``."""
    name_bytes = name.encode("utf-8")
    index = _FUNCTIONS.allocate(_HostFunction(call))
    error = ffi.wasmtime_component_linker_instance_add_func(
        instance.ptr(),
        ctypes.create_string_buffer(name_bytes),
        len(name_bytes),
        _trampoline,
        index,
        _finalize,
    )
    if error:
        _FUNCTIONS.deallocate(index)
        raise WasmtimeError._from_ptr(error)


def _call_host_function(
    index: int | None, context: Any, ty: Any, args: Any, nargs: int, results: Any, _n: int
) -> Any:
    """Called by wasmtime; returns a null pointer, or the error that traps the guest."""
    try:
        _FUNCTIONS.get(index or 0).invoke(context, ty, args, nargs, results)
    except Exception as exc:
        return _error_for(context, exc)
    return 0


def _error_for(context: Any, exc: Exception) -> Any:
    """The error pointer wasmtime-py would return for ``exc`` (it keeps a Python exception
    to re-raise where the guest was called)."""

    def reraise(_store: Any) -> None:
        raise exc

    return catch_exceptions(context, reraise)


def _release(index: int | None) -> None:
    """Called by wasmtime when the linker holding the function is dropped."""
    if _FUNCTIONS:
        _FUNCTIONS.deallocate(index or 0)


_trampoline = ffi.wasmtime_component_func_callback_t(_call_host_function)
_finalize = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_release)


# -- plans -------------------------------------------------------------------------------


def _plan(ty: FuncType) -> tuple[list[_Lift], _Lower | None]:
    with ty:
        lifts = [_lift_for(param) for _, param in ty.params]
        result = ty.result
    return lifts, None if result is None else _lower_for(result)


def _is_bytes(ty: ValType) -> bool:
    return isinstance(ty, ListType) and isinstance(ty.element, U8)


def _lift_for(ty: ValType) -> _Lift:
    if _is_bytes(ty):
        return _take_bytes
    if isinstance(ty, String):
        return _take_string
    return ty.convert_from_c


def _take_bytes(val: Any) -> bytes:
    try:
        return lift_bytes(val)
    finally:
        ffi.wasmtime_component_vallist_delete(byref(val.of.list))


def _take_string(val: Any) -> str:
    text = val.of.string
    try:
        return ctypes.string_at(text.data, text.size).decode("utf-8")
    finally:
        ffi.wasm_byte_vec_delete(byref(text))


def _lower_for(ty: ValType) -> _Lower:
    """The lowering of a result of type ``ty``; wasmtime-py's for types not listed here."""
    if _is_bytes(ty):
        return _lower_bytes_result
    if isinstance(ty, U64):
        return _scalar(ffi.WASMTIME_COMPONENT_U64.value, "u64", int)
    if isinstance(ty, U32):
        return _scalar(ffi.WASMTIME_COMPONENT_U32.value, "u32", int)
    if isinstance(ty, F64):
        return _scalar(ffi.WASMTIME_COMPONENT_F64.value, "f64", float)
    if isinstance(ty, Bool):
        return _scalar(ffi.WASMTIME_COMPONENT_BOOL.value, "boolean", bool)
    if isinstance(ty, String):
        return _lower_string
    if isinstance(ty, OptionType):
        return _option(_lower_for(ty.payload))
    if isinstance(ty, ResultType):
        ok, err = ty.ok, ty.err
        return _result(
            None if ok is None else _lower_for(ok),
            None if err is None else _lower_for(err),
            tagged=isinstance(ok, String) or (ok is None and err is None),
        )

    def generic(context: Any, val: Any, value: Any) -> None:
        store = StoreContext(context)
        try:
            ty.convert_to_c(store, value, ctypes.pointer(val))
        finally:
            store._invalidate()

    return generic


def _lower_bytes_result(_context: Any, val: Any, value: bytes) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"host call returned {type(value).__name__}, expected bytes")
    lower_bytes(val, value)


def _lower_string(_context: Any, val: Any, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"host call returned {type(value).__name__}, expected str")
    val.kind = ffi.WASMTIME_COMPONENT_STRING.value
    val.of.string = ffi.str_to_capi(value)


def _scalar(kind: int, field: str, convert: Callable[[Any], Any]) -> _Lower:
    def lower(_context: Any, val: Any, value: Any) -> None:
        val.kind = kind
        setattr(val.of, field, convert(value))

    return lower


def _boxed(context: Any, lower: _Lower, value: Any) -> Any:
    """A new heap value holding ``value`` (what an option or result case points to)."""
    inner = ffi.wasmtime_component_val_t()
    lower(context, inner, value)
    return ffi.wasmtime_component_val_new(byref(inner))


def _option(payload: _Lower) -> _Lower:
    def lower(context: Any, val: Any, value: Any) -> None:
        val.kind = ffi.WASMTIME_COMPONENT_OPTION.value
        val.of.option = None if value is None else _boxed(context, payload, value)

    return lower


def _result(ok: _Lower | None, err: _Lower | None, *, tagged: bool) -> _Lower:
    """``result<ok, err>``: a :class:`Variant` when both cases could hold the same Python
    value (``result<string, string>``), otherwise an error is the ``str`` and anything else
    the ok value (as wasmtime-py reads them)."""

    def lower(context: Any, val: Any, value: Any) -> None:
        if tagged:
            if not isinstance(value, Variant):
                raise TypeError("host call returned an untagged value for a tagged result")
            is_ok, payload = value.tag == "ok", value.payload
        else:
            is_ok, payload = not isinstance(value, str), value
        case = ok if is_ok else err
        val.kind = ffi.WASMTIME_COMPONENT_RESULT.value
        val.of.result.is_ok = is_ok
        val.of.result.val = None if case is None else _boxed(context, case, payload)

    return lower
