//! A Zig probe: exercises the Zig SDK's state, kv, sleep and failure paths.
//! Messages are an op name ("count") or a map {"op": ..., ...}.
const roost = @import("roost");

comptime {
    roost.exportAgent(@This());
}

fn opOf(msg: []const u8) []const u8 {
    return roost.mapGet(msg, "op") orelse msg;
}

fn isOp(op: []const u8, name: []const u8) bool {
    var r = roost.Reader.init(op);
    const v = r.next() orelse return false;
    return v.isStr(name);
}

fn strArg(msg: []const u8, key: []const u8) ?[]const u8 {
    var r = roost.Reader.init(roost.mapGet(msg, key) orelse return null);
    const v = r.next() orelse return null;
    return if (v.type == .str or v.type == .bin) v.data() else null;
}

fn replyStr(ctx: *roost.Ctx, s: []const u8) !void {
    var w = roost.Writer.init();
    w.str(s);
    try roost.replyWriter(ctx, &w);
}

pub fn onMessage(ctx: *roost.Ctx, msg: []const u8) !void {
    const op = opOf(msg);
    if (isOp(op, "count")) {
        const count = roost.stateInt(ctx, "count", 0) + 1;
        try roost.setStateInt(ctx, "count", count);
        var w = roost.Writer.init();
        w.int(count);
        return roost.replyWriter(ctx, &w);
    }
    if (isOp(op, "kv_set")) {
        const key = strArg(msg, "key") orelse return roost.fail(ctx, "kv_set needs a key");
        const value = strArg(msg, "value") orelse return roost.fail(ctx, "kv_set needs a value");
        try roost.kvSet(ctx, key, value);
        return replyStr(ctx, "ok");
    }
    if (isOp(op, "kv_get")) {
        const key = strArg(msg, "key") orelse return roost.fail(ctx, "kv_get needs a key");
        var w = roost.Writer.init();
        if (roost.kvGet(ctx, key)) |value| w.bin(value) else w.nil();
        return roost.replyWriter(ctx, &w);
    }
    if (isOp(op, "sleep")) {
        try replyStr(ctx, "before");
        _ = try roost.sleep(ctx, 5.0, afterSleep, null);
        return;
    }
    if (isOp(op, "raise")) return error.ProbeAskedToFail;
    return roost.fail(ctx, "unknown op");
}

fn afterSleep(ctx: *roost.Ctx, result: roost.OpResult, user: ?*anyopaque) !void {
    _ = user;
    switch (result) {
        .ok => {},
        .err => |why| return roost.fail(ctx, why),
    }
    const slept = roost.stateInt(ctx, "slept", 0) + 1;
    try roost.setStateInt(ctx, "slept", slept);
    var w = roost.Writer.init();
    w.map(1);
    w.str("after");
    w.int(slept);
    try roost.replyWriter(ctx, &w);
}
