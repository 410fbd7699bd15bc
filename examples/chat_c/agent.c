/* A chat agent in C: keeps the conversation in its state and asks the host's model for
 * each answer. Messages are the user's text; the reply is the model's text.
 * The llm call is an async op: the turn ends while the model thinks, no host thread waits,
 * and `answered` runs in a later turn with the result. */
#include "roost.h"

#define KEEP_MESSAGES 16 /* the history sent with each request, user and assistant turns */

/* state.history with {"role": role, "content": text} appended, oldest dropped past KEEP. */
static int append_history(roost_ctx *ctx, const char *role, const uint8_t *text, size_t len) {
    roost_bytes history = {(const uint8_t *)"\x90", 1};
    roost_state_get(ctx, "history", &history);
    roost_mp_reader r;
    roost_mp_value head;
    roost_mp_reader_init(&r, history.ptr, history.len);
    if (!roost_mp_read(&r, &head) || head.type != ROOST_MP_ARRAY)
        return roost_fail(ctx, "state.history is not a list");
    uint32_t drop = head.count + 1 > KEEP_MESSAGES ? head.count + 1 - KEEP_MESSAGES : 0;
    for (uint32_t i = 0; i < drop; i++) roost_mp_skip(&r);

    roost_mp w;
    roost_mp_init(&w);
    roost_mp_array(&w, head.count + 1 - drop);
    roost_mp_raw(&w, r.ptr + r.pos, r.len - r.pos); /* the messages kept, as they were */
    roost_mp_map(&w, 2);
    roost_mp_cstr(&w, "role");
    roost_mp_cstr(&w, role);
    roost_mp_cstr(&w, "content");
    roost_mp_str(&w, (const char *)text, len);
    if (w.failed) return roost_fail(ctx, "out of memory");
    return roost_state_set(ctx, "history", w.buf, w.len);
}

static int answered(roost_ctx *ctx, const roost_op_result *result, void *user) {
    (void)user;
    roost_mp w;
    roost_mp_init(&w);
    if (!result->ok) { /* the model failed: tell the user, keep the conversation */
        roost_mp_map(&w, 1);
        roost_mp_cstr(&w, "error");
        roost_mp_str(&w, result->error.ptr, result->error.len);
        return roost_reply_mp(ctx, &w);
    }
    roost_bytes raw;
    roost_mp_reader r;
    roost_mp_value content;
    if (!roost_mp_map_get(result->value.ptr, result->value.len, "content", 7, &raw))
        return roost_fail(ctx, "the llm result has no content");
    roost_mp_reader_init(&r, raw.ptr, raw.len);
    if (!roost_mp_read(&r, &content) || content.type != ROOST_MP_STR)
        return roost_fail(ctx, "the llm content is not text");
    if (append_history(ctx, "assistant", content.ptr, content.len) != ROOST_OK) return ROOST_ERR;
    return roost_reply(ctx, raw.ptr, raw.len);
}

int roost_on_message(roost_ctx *ctx, const uint8_t *msg, size_t len) {
    roost_mp_reader r;
    roost_mp_value text;
    roost_mp_reader_init(&r, msg, len);
    if (!roost_mp_read(&r, &text) || text.type != ROOST_MP_STR)
        return roost_fail(ctx, "send the chat agent text");
    if (append_history(ctx, "user", text.ptr, text.len) != ROOST_OK) return ROOST_ERR;

    roost_bytes history;
    roost_state_get(ctx, "history", &history);
    roost_mp request;
    roost_mp_init(&request);
    roost_mp_map(&request, 1);
    roost_mp_cstr(&request, "messages");
    roost_mp_raw(&request, history.ptr, history.len);
    if (request.failed) return roost_fail(ctx, "out of memory");
    if (!roost_llm_chat(ctx, request.buf, request.len, answered, 0)) {
        roost_str why = roost_last_error(ctx);
        return roost_fail_n(ctx, why.ptr, why.len);
    }
    return ROOST_OK;
}
