//! The bundled example in Zig: echoes each message and counts them in its durable state.
//! The same agent as examples/echo/agent.py; `roost build agent.zig` makes echo_zig.wasm.
const roost = @import("roost");

comptime {
    roost.exportAgent(@This());
}

pub fn onMessage(ctx: *roost.Ctx, msg: []const u8) !void {
    const count = roost.stateInt(ctx, "count", 0) + 1;
    try roost.setStateInt(ctx, "count", count);
    roost.log(ctx, .debug, "message received");

    var reply = roost.Writer.init();
    reply.map(2);
    reply.str("echo");
    reply.raw(msg);
    reply.str("count");
    reply.int(count);
    try roost.replyWriter(ctx, &reply);
}
