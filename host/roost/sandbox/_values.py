"""Calling the world's three exports with values built and read by hand.

wasmtime-py's generic call path reflects on the function's type at every call (the
function type, then each record field and list element type, each a C API round trip) and
moves a ``list<u8>`` one byte, one Python call, at a time. For a trivial turn that is most
of the call, and a 4 MiB message takes seconds, all of it inside the turn's CPU deadline.
The exports have fixed signatures (``guest_sdk/roost_sdk/wit/roost-agent.wit``), so this module
builds the C API's argument values directly, moves bytes with one strided copy each way,
and frees each value tree with one call.

Every union member is read only after its ``kind`` was checked, so a component whose exports
have other types fails with :class:`GuestAbiError` instead of being misread. This relies on
wasmtime-py's ctypes bindings (``wasmtime._ffi``), which are pinned with wasmtime.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import byref
from typing import Any

from wasmtime import _ffi as ffi
from wasmtime.component import Func
from wasmtime.component._enter import enter_wasm

from ..errors import GuestAbiError
from .protocol import GuestReply, TurnOutput

_Val = ffi.wasmtime_component_val_t
_VAL_BYTES = ctypes.sizeof(_Val)
_PAYLOAD_OFFSET: int = _Val.of.offset
_CHUNK = 16_384
"""Values copied at a time between the C API's array and Python: a 1 MB payload's whole
array is 32 MB, allocated afresh (and page-faulted) on every copy, which held the GIL
~19 ms; in chunks of 512 KB, reused from the heap, it takes ~3 ms."""

_U8 = ffi.WASMTIME_COMPONENT_U8.value
_U64 = ffi.WASMTIME_COMPONENT_U64.value
_STRING = ffi.WASMTIME_COMPONENT_STRING.value
_LIST = ffi.WASMTIME_COMPONENT_LIST.value
_RECORD = ffi.WASMTIME_COMPONENT_RECORD.value
_VARIANT = ffi.WASMTIME_COMPONENT_VARIANT.value
_OPTION = ffi.WASMTIME_COMPONENT_OPTION.value
_RESULT = ffi.WASMTIME_COMPONENT_RESULT.value

_EVENT_FIELDS = ("id", "kind", "payload")
_TURN_OUTPUT_FIELDS = ("replies", "done", "state")


def call_init(func: Func, store: Any, config: bytes, state: bytes | None) -> str | None:
    """``init(config, state) -> result<_, string>``: None, or the guest's error text."""
    args = (_Val * 2)()
    with _freed_on_error(args):
        lower_bytes(args[0], config)
        args[1].kind = _OPTION  # a null pointer: none
        if state is not None:
            inner = _Val()
            lower_bytes(inner, state)
            args[1].of.option = ffi.wasmtime_component_val_new(byref(inner))
    result = _call(func, store, args)
    try:
        ok, payload = _result(result)
        return None if ok else _string(_deref(payload, "init's error"))
    finally:
        ffi.wasmtime_component_val_delete(byref(result))


def call_on_event(
    func: Func, store: Any, event_id: int, kind: str, payload: bytes
) -> TurnOutput | str:
    """``on-event(event) -> result<turn-output, string>``: the output or the error text."""
    args = (_Val * 1)()
    with _freed_on_error(args):
        names = [ffi.str_to_capi(name) for name in _EVENT_FIELDS]
        kind_text = ffi.str_to_capi(kind)
        event = args[0]
        event.kind = _RECORD
        ffi.wasmtime_component_valrecord_new_uninit(byref(event.of.record), len(names))
        fields = event.of.record.data
        for i, name in enumerate(names):
            fields[i].name = name
            fields[i].val.kind = ffi.WASMTIME_COMPONENT_BOOL.value  # until set below
        fields[0].val.kind = _U64
        fields[0].val.of.u64 = event_id
        fields[1].val.kind = _STRING
        fields[1].val.of.string = kind_text
        lower_bytes(fields[2].val, payload)
    return _turn_result(_call(func, store, args))


def call_on_complete(
    func: Func, store: Any, op_id: int, ok: bool, value: bytes | str
) -> TurnOutput | str:
    """``on-complete(op, outcome) -> result<turn-output, string>``."""
    if ok != isinstance(value, bytes):
        raise GuestAbiError("an ok op result carries bytes, an error carries text")
    args = (_Val * 2)()
    with _freed_on_error(args):
        args[0].kind = _U64
        args[0].of.u64 = op_id
        tag = ffi.str_to_capi("ok" if ok else "err")
        inner = _Val()
        if isinstance(value, bytes):
            lower_bytes(inner, value)
        else:
            inner.kind = _STRING
            inner.of.string = ffi.str_to_capi(value)
        args[1].kind = _VARIANT
        args[1].of.variant.discriminant = tag
        args[1].of.variant.val = ffi.wasmtime_component_val_new(byref(inner))
    return _turn_result(_call(func, store, args))


# -- calling -----------------------------------------------------------------------------------


@contextmanager
def _freed_on_error(args: ctypes.Array[Any]) -> Iterator[None]:
    """Free half-built arguments if building them fails (unset values are zeroed: bool)."""
    try:
        yield
    except BaseException:
        for arg in args:
            ffi.wasmtime_component_val_delete(byref(arg))
        raise


def _call(func: Func, store: Any, args: ctypes.Array[Any]) -> Any:
    """Call ``func``; the arguments are freed here, the result is the caller's to free."""
    result = _Val()
    context = store._context()
    try:
        enter_wasm(
            lambda: ffi.wasmtime_component_func_call(
                byref(func._func), context, args, len(args), byref(result), 1
            )
        )
    finally:
        for arg in args:
            ffi.wasmtime_component_val_delete(byref(arg))
    return result


def _turn_result(result: Any) -> TurnOutput | str:
    try:
        ok, payload = _result(result)
        if not ok:
            return _string(_deref(payload, "the error"))
        record = _fields(_deref(payload, "turn-output"), _TURN_OUTPUT_FIELDS)
        replies = []
        for item in _list(record[0]):
            reply = _fields(item, ("event", "payload"))
            replies.append(GuestReply(_u64(reply[0]), lift_bytes(reply[1])))
        done = [_u64(item) for item in _list(record[1])]
        state = _option(record[2])
        return TurnOutput(replies, done, None if state is None else lift_bytes(state))
    finally:
        ffi.wasmtime_component_val_delete(byref(result))


# -- lowering ----------------------------------------------------------------------------------


def lower_bytes(val: Any, data: bytes) -> None:
    """Make ``val`` a ``list<u8>`` holding ``data``: strided copies into the C API's array
    of values (the kind and the byte of each), a chunk at a time, instead of one
    conversion per byte."""
    count = len(data)
    val.kind = _LIST
    ffi.wasmtime_component_vallist_new_uninit(byref(val.of.list), count)
    address: int = ctypes.cast(val.of.list.data, ctypes.c_void_p).value or 0
    kinds = bytes((_U8,)) * min(count, _CHUNK)
    for first in range(0, count, _CHUNK):
        n = min(_CHUNK, count - first)
        chunk = bytearray(n * _VAL_BYTES)
        chunk[0::_VAL_BYTES] = kinds[:n]
        chunk[_PAYLOAD_OFFSET::_VAL_BYTES] = data[first : first + n]
        # The address of the first byte: an array over the whole buffer would make a new
        # ctypes array type per length, and types are cyclic garbage for the collector.
        start = ctypes.c_char.from_buffer(chunk)
        ctypes.memmove(address + first * _VAL_BYTES, ctypes.addressof(start), len(chunk))


# -- lifting -----------------------------------------------------------------------------------


def _expect(val: Any, kind: int, what: str) -> None:
    if val.kind != kind:
        raise GuestAbiError(
            f"the component's exports do not match the roost:agent world ({what} has value "
            f"kind {val.kind}, expected {kind}); build it against the world with roost build"
        )


def _result(val: Any) -> tuple[bool, Any]:
    _expect(val, _RESULT, "the result")
    return bool(val.of.result.is_ok), val.of.result.val


def _deref(pointer: Any, what: str) -> Any:
    if not pointer:
        raise GuestAbiError(f"the component returned no {what}")
    return pointer.contents


def _string(val: Any) -> str:
    _expect(val, _STRING, "a string")
    text = val.of.string
    return ctypes.string_at(text.data, text.size).decode("utf-8", errors="replace")


def _u64(val: Any) -> int:
    _expect(val, _U64, "a u64")
    return int(val.of.u64)


def _fields(val: Any, names: tuple[str, ...]) -> list[Any]:
    _expect(val, _RECORD, "a record")
    record = val.of.record
    if record.size != len(names):
        raise GuestAbiError(f"a record has {record.size} fields, expected {len(names)}")
    return [record.data[i].val for i in range(record.size)]


def _list(val: Any) -> list[Any]:
    _expect(val, _LIST, "a list")
    items = val.of.list
    return [items.data[i] for i in range(items.size)]


def _option(val: Any) -> Any | None:
    _expect(val, _OPTION, "an option")
    return val.of.option.contents if val.of.option else None


def lift_bytes(val: Any) -> bytes:
    """A ``list<u8>`` as bytes: strided slices of the C API's array of values, a chunk at a
    time."""
    _expect(val, _LIST, "a list<u8>")
    items = val.of.list
    if items.size == 0:
        return b""
    if items.data[0].kind != _U8:
        raise GuestAbiError("a payload is not a list<u8>")
    address: int = ctypes.cast(items.data, ctypes.c_void_p).value or 0
    count: int = items.size
    if count <= _CHUNK:
        return ctypes.string_at(address, count * _VAL_BYTES)[_PAYLOAD_OFFSET::_VAL_BYTES]
    return b"".join(
        ctypes.string_at(address + first * _VAL_BYTES, min(_CHUNK, count - first) * _VAL_BYTES)[
            _PAYLOAD_OFFSET::_VAL_BYTES
        ]
        for first in range(0, count, _CHUNK)
    )
