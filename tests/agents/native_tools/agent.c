/* A native agent whose model calls tools: the message is {"text", "tools"} (OpenAI function
 * tools, msgpack); the agent asks the model with them, reads the tool calls out of the
 * answer and replies [{"name", "arguments"}, ...], or the answer's content when it called
 * none. */
#include "roost.h"

static int reply_error(roost_ctx *ctx, roost_str error) {
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_map(&w, 1);
    roost_mp_cstr(&w, "error");
    roost_mp_str(&w, error.ptr, error.len);
    return roost_reply_mp(ctx, &w);
}

static bool get(roost_bytes map, const char *key, roost_bytes *value) {
    size_t n = 0;
    while (key[n]) n++;
    return roost_mp_map_get(map.ptr, map.len, key, n, value);
}

static int answered(roost_ctx *ctx, const roost_op_result *result, void *user) {
    (void)user;
    if (!result->ok) return reply_error(ctx, result->error);
    roost_bytes calls, content;
    if (!get(result->value, "tool_calls", &calls)) return roost_fail(ctx, "no tool_calls");
    roost_mp_reader r;
    roost_mp_value head;
    roost_mp_reader_init(&r, calls.ptr, calls.len);
    if (!roost_mp_read(&r, &head) || head.type != ROOST_MP_ARRAY)
        return roost_fail(ctx, "tool_calls is not an array");
    roost_mp w;
    roost_mp_init(&w);
    if (head.count == 0) {
        if (!get(result->value, "content", &content)) return roost_fail(ctx, "no content");
        roost_mp_raw(&w, content.ptr, content.len);
        return roost_reply_mp(ctx, &w);
    }
    roost_mp_array(&w, head.count);
    for (uint32_t i = 0; i < head.count; i++) {
        roost_bytes call, name, arguments;
        if (!roost_mp_read_raw(&r, &call)) return roost_fail(ctx, "a malformed tool call");
        if (!get(call, "name", &name) || !get(call, "arguments", &arguments))
            return roost_fail(ctx, "a tool call without name or arguments");
        roost_mp_map(&w, 2);
        roost_mp_cstr(&w, "name");
        roost_mp_raw(&w, name.ptr, name.len);
        roost_mp_cstr(&w, "arguments");
        roost_mp_raw(&w, arguments.ptr, arguments.len);
    }
    return roost_reply_mp(ctx, &w);
}

int roost_on_message(roost_ctx *ctx, const uint8_t *msg, size_t len) {
    roost_bytes message = {msg, len}, text, tools;
    if (!get(message, "text", &text) || !get(message, "tools", &tools))
        return roost_fail(ctx, "send {\"text\": ..., \"tools\": [...]}");
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_map(&w, 2);
    roost_mp_cstr(&w, "messages");
    roost_mp_array(&w, 1);
    roost_mp_map(&w, 2);
    roost_mp_cstr(&w, "role");
    roost_mp_cstr(&w, "user");
    roost_mp_cstr(&w, "content");
    roost_mp_raw(&w, text.ptr, text.len);
    roost_mp_cstr(&w, "tools");
    roost_mp_raw(&w, tools.ptr, tools.len);
    if (!roost_llm_chat(ctx, w.buf, w.len, answered, 0)) {
        roost_str why = roost_last_error(ctx);
        return roost_fail_n(ctx, why.ptr, why.len);
    }
    return ROOST_OK;
}
