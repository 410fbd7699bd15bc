//! Write Roost agents in Zig against the roost:agent@0.1.0 world.
//!
//! This module wraps the C SDK (`guest_sdk/roost_sdk/c/roost.c`, which implements the canonical ABI
//! and is compiled into every native agent) in Zig types. An agent is a file that imports
//! it as `roost`, exports its handlers with `roost.exportAgent`, and defines them:
//!
//!     const roost = @import("roost");
//!
//!     comptime {
//!         roost.exportAgent(@This());
//!     }
//!
//!     pub fn onMessage(ctx: *roost.Ctx, msg: []const u8) !void {
//!         const count = roost.stateInt(ctx, "count", 0) + 1;
//!         try roost.setStateInt(ctx, "count", count);
//!         var w = roost.Writer.init();
//!         w.map(1);
//!         w.str("count");
//!         w.int(count);
//!         try roost.replyWriter(ctx, &w);
//!     }
//!
//! `roost build agent.zig` compiles it. Handlers: `onMessage` (required), `onStart`,
//! `onTimer`, `onAgentMessage`; an error returned from one fails the turn with the message
//! given to `fail`, or with the error's name. Semantics are those of the C SDK (roost.h):
//! msgpack payloads, a msgpack-map state handed back when it changed, replies to the
//! current event's sender, async ops completed by a callback in a later turn, and slices
//! from the SDK valid until the handler returns.

/// The current turn; only valid inside a handler or an op callback.
pub const Ctx = opaque {};

pub const Level = enum(c_int) { debug = 0, info = 1, warn = 2, err = 3 };

/// What went wrong; the message is in the turn (`fail`) or in `lastError`.
pub const Error = error{
    /// The turn failed: see the message passed to `fail`.
    Failed,
    /// A host call refused (kv quota, invalid sleep): see `lastError`.
    Refused,
};

const Bytes = extern struct { ptr: ?[*]const u8, len: usize };

fn slice(b: Bytes) []const u8 {
    return if (b.ptr) |p| p[0..b.len] else &.{};
}

// -- the C SDK --------------------------------------------------------------------------------

extern fn roost_fail_n(ctx: *Ctx, message: [*]const u8, len: usize) c_int;
extern fn roost_last_error(ctx: *Ctx) Bytes;
extern fn roost_kind(ctx: *Ctx) Bytes;
extern fn roost_agent_id(ctx: *Ctx) Bytes;
extern fn roost_config(ctx: *Ctx) Bytes;
extern fn roost_reply(ctx: *Ctx, payload: [*]const u8, len: usize) c_int;
extern fn roost_state(ctx: *Ctx) Bytes;
extern fn roost_set_state(ctx: *Ctx, map: [*]const u8, len: usize) c_int;
extern fn roost_state_set(ctx: *Ctx, key: [*:0]const u8, value: [*]const u8, len: usize) c_int;
extern fn roost_state_get(ctx: *Ctx, key: [*:0]const u8, value: *Bytes) bool;
extern fn roost_state_int(ctx: *Ctx, key: [*:0]const u8, fallback: i64) i64;
extern fn roost_state_set_int(ctx: *Ctx, key: [*:0]const u8, value: i64) c_int;
extern fn roost_state_remove(ctx: *Ctx, key: [*:0]const u8) bool;
extern fn roost_kv_get(ctx: *Ctx, key: [*]const u8, key_len: usize, value: *Bytes) bool;
extern fn roost_kv_set(ctx: *Ctx, key: [*]const u8, key_len: usize, value: [*]const u8, len: usize) c_int;
extern fn roost_kv_delete(ctx: *Ctx, key: [*]const u8, key_len: usize) void;
extern fn roost_kv_keys(ctx: *Ctx, prefix: [*]const u8, prefix_len: usize, limit: u32, keys: *?[*]const Bytes) usize;
extern fn roost_now(ctx: *Ctx) f64;
extern fn roost_random(ctx: *Ctx, buf: [*]u8, len: usize) void;
extern fn roost_log(ctx: *Ctx, level: Level, message: [*]const u8, len: usize) void;
extern fn roost_sleep(ctx: *Ctx, seconds: f64, done: *const CCallback, user: ?*anyopaque) u64;
extern fn roost_llm_chat(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_llm_embed(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_mcp_list_tools(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_mcp_call_tool(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_mcp_list_resources(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_mcp_read_resource(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_approval_request(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_http_fetch(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_agents_ask(ctx: *Ctx, request: [*]const u8, len: usize, done: ?*const CCallback, user: ?*anyopaque) u64;
extern fn roost_agents_send(ctx: *Ctx, kind: [*]const u8, kind_len: usize, id: [*]const u8, id_len: usize, message: [*]const u8, len: usize) c_int;
extern fn roost_alloc(size: usize) ?*anyopaque;
extern fn roost_free(ptr: ?*anyopaque) void;
extern fn roost_turn_alloc(size: usize) ?*anyopaque;

const COpResult = extern struct { ok: bool, value: Bytes, err: Bytes };
const CCallback = fn (ctx: *Ctx, result: *const COpResult, user: ?*anyopaque) callconv(.c) c_int;

// -- handlers ------------------------------------------------------------------------------------

/// Export the handlers `Agent` defines (`onMessage`, and optionally `onStart`, `onTimer`,
/// `onAgentMessage`, `onContinuation`) under the names the C SDK calls. Use from a
/// `comptime` block.
pub fn exportAgent(comptime Agent: type) void {
    const H = struct {
        fn onMessage(ctx: *Ctx, msg: [*]const u8, len: usize) callconv(.c) c_int {
            return status(ctx, Agent.onMessage(ctx, msg[0..len]));
        }
        fn onStart(ctx: *Ctx) callconv(.c) c_int {
            return status(ctx, Agent.onStart(ctx));
        }
        fn onTimer(ctx: *Ctx, payload: [*]const u8, len: usize) callconv(.c) c_int {
            return status(ctx, Agent.onTimer(ctx, payload[0..len]));
        }
        fn onAgentMessage(ctx: *Ctx, sender: Bytes, msg: [*]const u8, len: usize) callconv(.c) c_int {
            return status(ctx, Agent.onAgentMessage(ctx, slice(sender), msg[0..len]));
        }
        fn onContinuation(ctx: *Ctx, payload: [*]const u8, len: usize) callconv(.c) c_int {
            return status(ctx, Agent.onContinuation(ctx, payload[0..len]));
        }
    };
    @export(&H.onMessage, .{ .name = "roost_on_message" });
    if (@hasDecl(Agent, "onStart")) @export(&H.onStart, .{ .name = "roost_on_start" });
    if (@hasDecl(Agent, "onTimer")) @export(&H.onTimer, .{ .name = "roost_on_timer" });
    if (@hasDecl(Agent, "onAgentMessage")) @export(&H.onAgentMessage, .{ .name = "roost_on_agent_message" });
    if (@hasDecl(Agent, "onContinuation")) @export(&H.onContinuation, .{ .name = "roost_on_continuation" });
}

fn status(ctx: *Ctx, result: anyerror!void) c_int {
    result catch |e| {
        const refused = slice(roost_last_error(ctx));
        const text = if (e == error.Refused and refused.len > 0) refused else @errorName(e);
        return roost_fail_n(ctx, text.ptr, text.len);
    };
    return 0;
}

/// Fail the turn with `message`: `return roost.fail(ctx, "why");`
pub fn fail(ctx: *Ctx, message: []const u8) Error {
    _ = roost_fail_n(ctx, message.ptr, message.len);
    return error.Failed;
}

fn check(rc: c_int) Error!void {
    if (rc != 0) return error.Failed;
}

/// Why the last host call was refused.
pub fn lastError(ctx: *Ctx) []const u8 {
    return slice(roost_last_error(ctx));
}

pub fn kind(ctx: *Ctx) []const u8 {
    return slice(roost_kind(ctx));
}

pub fn agentId(ctx: *Ctx) []const u8 {
    return slice(roost_agent_id(ctx));
}

/// The kind's [config] table, msgpack.
pub fn config(ctx: *Ctx) []const u8 {
    return slice(roost_config(ctx));
}

/// Reply to the sender of the current event with a msgpack payload (copied).
pub fn reply(ctx: *Ctx, payload: []const u8) Error!void {
    return check(roost_reply(ctx, payload.ptr, payload.len));
}

pub fn replyWriter(ctx: *Ctx, w: *const Writer) Error!void {
    if (w.inner.failed) return fail(ctx, "out of memory while encoding a reply");
    return reply(ctx, w.bytes());
}

// -- state ------------------------------------------------------------------------------------------

/// The state map, msgpack.
pub fn state(ctx: *Ctx) []const u8 {
    return slice(roost_state(ctx));
}

/// Replace the whole state with a msgpack map (copied).
pub fn setState(ctx: *Ctx, map: []const u8) Error!void {
    return check(roost_set_state(ctx, map.ptr, map.len));
}

/// The msgpack value of one state key.
pub fn stateGet(ctx: *Ctx, key: [:0]const u8) ?[]const u8 {
    var value: Bytes = undefined;
    return if (roost_state_get(ctx, key.ptr, &value)) slice(value) else null;
}

/// Set one state key to a msgpack value (copied).
pub fn stateSet(ctx: *Ctx, key: [:0]const u8, value: []const u8) Error!void {
    return check(roost_state_set(ctx, key.ptr, value.ptr, value.len));
}

pub fn stateInt(ctx: *Ctx, key: [:0]const u8, fallback: i64) i64 {
    return roost_state_int(ctx, key.ptr, fallback);
}

pub fn setStateInt(ctx: *Ctx, key: [:0]const u8, value: i64) Error!void {
    return check(roost_state_set_int(ctx, key.ptr, value));
}

pub fn stateRemove(ctx: *Ctx, key: [:0]const u8) bool {
    return roost_state_remove(ctx, key.ptr);
}

// -- capabilities -------------------------------------------------------------------------------------

pub fn kvGet(ctx: *Ctx, key: []const u8) ?[]const u8 {
    var value: Bytes = undefined;
    return if (roost_kv_get(ctx, key.ptr, key.len, &value)) slice(value) else null;
}

/// `error.Refused` when over quota or the key is invalid: see `lastError`.
pub fn kvSet(ctx: *Ctx, key: []const u8, value: []const u8) Error!void {
    if (roost_kv_set(ctx, key.ptr, key.len, value.ptr, value.len) != 0) return error.Refused;
}

pub fn kvDelete(ctx: *Ctx, key: []const u8) void {
    roost_kv_delete(ctx, key.ptr, key.len);
}

/// Keys starting with `prefix`, sorted, at most `limit`. Each key is a `[]const u8`-shaped
/// (ptr, len) pair; use `keyAt`.
pub fn kvKeys(ctx: *Ctx, prefix: []const u8, limit: u32) Keys {
    var keys: ?[*]const Bytes = null;
    const n = roost_kv_keys(ctx, prefix.ptr, prefix.len, limit, &keys);
    return .{ .items = if (keys) |k| k[0..n] else &.{} };
}

pub const Keys = struct {
    items: []const Bytes,

    pub fn len(self: Keys) usize {
        return self.items.len;
    }

    pub fn keyAt(self: Keys, i: usize) []const u8 {
        return slice(self.items[i]);
    }
};

pub fn now(ctx: *Ctx) f64 {
    return roost_now(ctx);
}

pub fn random(ctx: *Ctx, buf: []u8) void {
    roost_random(ctx, buf.ptr, buf.len);
}

pub fn log(ctx: *Ctx, level: Level, message: []const u8) void {
    roost_log(ctx, level, message.ptr, message.len);
}

// -- async ops ------------------------------------------------------------------------------------------

pub const OpResult = union(enum) {
    /// The op's msgpack result (nil for a sleep).
    ok: []const u8,
    /// Why it failed.
    err: []const u8,
};

/// An op's completion callback: runs in a later turn, like a handler.
pub const Callback = fn (ctx: *Ctx, result: OpResult, user: ?*anyopaque) anyerror!void;

fn trampoline(comptime done: Callback) *const CCallback {
    const T = struct {
        fn call(c: *Ctx, r: *const COpResult, u: ?*anyopaque) callconv(.c) c_int {
            const result: OpResult = if (r.ok) .{ .ok = slice(r.value) } else .{ .err = slice(r.err) };
            return status(c, done(c, result, u));
        }
    };
    return &T.call;
}

fn started(op: u64) Error!u64 {
    return if (op == 0) error.Refused else op;
}

/// Run `done(ctx, result, user)` in a later turn, after `seconds`. `user` must outlive the
/// turn. Returns the op id; `error.Refused` when the host refused (see `lastError`).
pub fn sleep(ctx: *Ctx, seconds: f64, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_sleep(ctx, seconds, trampoline(done), user));
}

/// llm.chat with a msgpack request {messages, model?, max_tokens?, temperature?, tools?,
/// tool_choice?, stream?}; `done` gets {content, tool_calls, finish_reason, message, model,
/// provider, usage}.
pub fn llmChat(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_llm_chat(ctx, request.ptr, request.len, trampoline(done), user));
}

/// llm.embed with a msgpack request {input, model?}; `done` gets {embeddings, model,
/// provider, usage}.
pub fn llmEmbed(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_llm_embed(ctx, request.ptr, request.len, trampoline(done), user));
}

/// mcp.list-tools with a msgpack request {server}; `done` gets {tools}.
pub fn mcpListTools(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_mcp_list_tools(ctx, request.ptr, request.len, trampoline(done), user));
}

/// mcp.call-tool with a msgpack request {server, name, arguments?}; `done` gets {content,
/// text, structured, is_error}.
pub fn mcpCallTool(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_mcp_call_tool(ctx, request.ptr, request.len, trampoline(done), user));
}

/// mcp.list-resources with a msgpack request {server}; `done` gets {resources}.
pub fn mcpListResources(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_mcp_list_resources(ctx, request.ptr, request.len, trampoline(done), user));
}

/// mcp.read-resource with a msgpack request {server, uri}; `done` gets {contents}.
pub fn mcpReadResource(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_mcp_read_resource(ctx, request.ptr, request.len, trampoline(done), user));
}

/// approval.request with a msgpack request {action, details?, timeout_s?}; `done` gets
/// {id, approved, decision, by, note, decided_at} once a person decided.
pub fn approvalRequest(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_approval_request(ctx, request.ptr, request.len, trampoline(done), user));
}

/// http.fetch with a msgpack request {url, method?, headers?, body?}; `done` gets
/// {status, headers, body}.
pub fn httpFetch(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_http_fetch(ctx, request.ptr, request.len, trampoline(done), user));
}

/// agents.ask with a msgpack request {kind, id, message, timeout_s}; `done` gets the
/// other agent's replies.
pub fn ask(ctx: *Ctx, request: []const u8, comptime done: Callback, user: ?*anyopaque) Error!u64 {
    return started(roost_agents_ask(ctx, request.ptr, request.len, trampoline(done), user));
}

/// agents.send: deliver `message` (msgpack) to kind/id when this turn commits.
pub fn send(ctx: *Ctx, kind_name: []const u8, id: []const u8, message: []const u8) Error!void {
    if (roost_agents_send(ctx, kind_name.ptr, kind_name.len, id.ptr, id.len, message.ptr, message.len) != 0)
        return error.Refused;
}

// -- memory ---------------------------------------------------------------------------------------------

/// Memory that lives until `free`d; null when the instance's memory limit is reached.
pub fn alloc(size: usize) ?[*]u8 {
    return @ptrCast(roost_alloc(size));
}

pub fn free(ptr: ?[*]u8) void {
    roost_free(@ptrCast(ptr));
}

/// Memory that lives until the current handler returns.
pub fn turnAlloc(size: usize) ?[*]u8 {
    return @ptrCast(roost_turn_alloc(size));
}

// -- msgpack ----------------------------------------------------------------------------------------------

const CWriter = extern struct { buf: ?[*]u8, len: usize, cap: usize, failed: bool };

extern fn roost_mp_nil(w: *CWriter) void;
extern fn roost_mp_bool(w: *CWriter, value: bool) void;
extern fn roost_mp_int(w: *CWriter, value: i64) void;
extern fn roost_mp_uint(w: *CWriter, value: u64) void;
extern fn roost_mp_double(w: *CWriter, value: f64) void;
extern fn roost_mp_str(w: *CWriter, s: [*]const u8, len: usize) void;
extern fn roost_mp_bin(w: *CWriter, data: [*]const u8, len: usize) void;
extern fn roost_mp_array(w: *CWriter, count: u32) void;
extern fn roost_mp_map(w: *CWriter, count: u32) void;
extern fn roost_mp_raw(w: *CWriter, data: [*]const u8, len: usize) void;

/// A msgpack writer into a growable turn-arena buffer; out-of-memory is sticky (`failed`).
pub const Writer = struct {
    inner: CWriter,

    pub fn init() Writer {
        return .{ .inner = .{ .buf = null, .len = 0, .cap = 0, .failed = false } };
    }

    pub fn nil(w: *Writer) void {
        roost_mp_nil(&w.inner);
    }
    pub fn boolean(w: *Writer, value: bool) void {
        roost_mp_bool(&w.inner, value);
    }
    pub fn int(w: *Writer, value: i64) void {
        roost_mp_int(&w.inner, value);
    }
    pub fn uint(w: *Writer, value: u64) void {
        roost_mp_uint(&w.inner, value);
    }
    pub fn float(w: *Writer, value: f64) void {
        roost_mp_double(&w.inner, value);
    }
    pub fn str(w: *Writer, s: []const u8) void {
        roost_mp_str(&w.inner, s.ptr, s.len);
    }
    pub fn bin(w: *Writer, data: []const u8) void {
        roost_mp_bin(&w.inner, data.ptr, data.len);
    }
    /// Follow with `count` values.
    pub fn array(w: *Writer, count: u32) void {
        roost_mp_array(&w.inner, count);
    }
    /// Follow with `count` key/value pairs.
    pub fn map(w: *Writer, count: u32) void {
        roost_mp_map(&w.inner, count);
    }
    /// Append an already-encoded msgpack value.
    pub fn raw(w: *Writer, data: []const u8) void {
        roost_mp_raw(&w.inner, data.ptr, data.len);
    }
    pub fn failed(w: *const Writer) bool {
        return w.inner.failed;
    }
    pub fn bytes(w: *const Writer) []const u8 {
        return if (w.inner.buf) |b| b[0..w.inner.len] else &.{};
    }
};

pub const ValueType = enum(c_int) { nil, boolean, int, uint, float, str, bin, array, map, ext };

/// The head of one msgpack value: arrays and maps carry their `count` only.
pub const Value = extern struct {
    type: ValueType,
    b: bool,
    i: i64,
    u: u64,
    f: f64,
    ptr: ?[*]const u8,
    len: usize,
    count: u32,

    /// STR, BIN, EXT: the bytes.
    pub fn data(v: *const Value) []const u8 {
        return if (v.ptr) |p| p[0..v.len] else &.{};
    }

    pub fn isStr(v: *const Value, s: []const u8) bool {
        const d = v.data();
        if (v.type != .str or d.len != s.len) return false;
        for (d, s) |x, y| if (x != y) return false;
        return true;
    }
};

const CReader = extern struct { ptr: ?[*]const u8, len: usize, pos: usize, failed: bool };

extern fn roost_mp_read(r: *CReader, value: *Value) bool;
extern fn roost_mp_skip(r: *CReader) bool;
extern fn roost_mp_read_raw(r: *CReader, raw: *Bytes) bool;
extern fn roost_mp_map_get(map: [*]const u8, len: usize, key: [*]const u8, key_len: usize, value: *Bytes) bool;

/// A msgpack reader; `failed` is set on malformed input.
pub const Reader = struct {
    inner: CReader,

    pub fn init(data: []const u8) Reader {
        return .{ .inner = .{ .ptr = data.ptr, .len = data.len, .pos = 0, .failed = false } };
    }
    /// The next value's head, or null at the end or on malformed input.
    pub fn next(r: *Reader) ?Value {
        var v: Value = undefined;
        return if (roost_mp_read(&r.inner, &v)) v else null;
    }
    /// Skip one whole value, nested values included.
    pub fn skip(r: *Reader) bool {
        return roost_mp_skip(&r.inner);
    }
    /// One whole value as its msgpack bytes.
    pub fn rawValue(r: *Reader) ?[]const u8 {
        var b: Bytes = undefined;
        return if (roost_mp_read_raw(&r.inner, &b)) slice(b) else null;
    }
    pub fn failed(r: *const Reader) bool {
        return r.inner.failed;
    }
};

/// In the msgpack map `map`, the value of string key `key`, as msgpack bytes.
pub fn mapGet(map: []const u8, key: []const u8) ?[]const u8 {
    var b: Bytes = undefined;
    return if (roost_mp_map_get(map.ptr, map.len, key.ptr, key.len, &b)) slice(b) else null;
}
