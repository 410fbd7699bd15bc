/* The bundled example in C: echoes each message and counts them in its durable state.
 * The same agent as examples/echo/agent.py; `roost build agent.c` makes echo_c.wasm. */
#include "roost.h"

int roost_on_message(roost_ctx *ctx, const uint8_t *msg, size_t len) {
    int64_t count = roost_state_int(ctx, "count", 0) + 1;
    if (roost_state_set_int(ctx, "count", count) != ROOST_OK) return ROOST_ERR;
    roost_log_cstr(ctx, ROOST_DEBUG, "message received");

    roost_mp reply;
    roost_mp_init(&reply);
    roost_mp_map(&reply, 2);
    roost_mp_cstr(&reply, "echo");
    roost_mp_raw(&reply, msg, len);
    roost_mp_cstr(&reply, "count");
    roost_mp_int(&reply, count);
    return roost_reply_mp(ctx, &reply);
}
