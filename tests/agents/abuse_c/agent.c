/* An abusive native agent (loadtests/neighbours.py). The message is a map {"op": ...}:
 *
 * - {"op": "big", "size": N}: reply with N bytes, a result as large as the kind's
 *   max_reply_bytes lets it be, for the host to lift out of linear memory;
 * - {"op": "sleeps", "n": N, "seconds": S}: start N sleeps in one turn without waiting
 *   for any, and reply {"started": k, "error": why the host refused the next one}; the
 *   event ends when the started ones have. */
#include "roost.h"

static bool op_is(const uint8_t *msg, size_t len, const char *name) {
    roost_bytes raw;
    roost_mp_reader r;
    roost_mp_value v;
    if (!roost_mp_map_get(msg, len, "op", 2, &raw)) return false;
    roost_mp_reader_init(&r, raw.ptr, raw.len);
    return roost_mp_read(&r, &v) && roost_mp_is_str(&v, name);
}

static double arg_number(const uint8_t *msg, size_t len, const char *key, size_t key_len) {
    roost_bytes raw;
    roost_mp_reader r;
    roost_mp_value v;
    if (!roost_mp_map_get(msg, len, key, key_len, &raw)) return 0;
    roost_mp_reader_init(&r, raw.ptr, raw.len);
    if (!roost_mp_read(&r, &v)) return 0;
    if (v.type == ROOST_MP_INT) return (double)v.i;
    if (v.type == ROOST_MP_FLOAT) return v.f;
    return 0;
}

static uint64_t slept;

static int woke(roost_ctx *ctx, const roost_op_result *result, void *user) {
    (void)ctx;
    (void)result;
    (void)user;
    slept++;
    return ROOST_OK;
}

static int big(roost_ctx *ctx, size_t size) {
    uint8_t *bytes = roost_turn_alloc(size ? size : 1);
    if (!bytes) return roost_fail(ctx, "out of memory");
    for (size_t i = 0; i < size; i++) bytes[i] = (uint8_t)i;
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_bin(&w, bytes, size);
    return roost_reply_mp(ctx, &w);
}

static int sleeps(roost_ctx *ctx, int64_t n, double seconds) {
    int64_t started = 0;
    roost_str refused = {"", 0};
    for (int64_t i = 0; i < n; i++) {
        if (!roost_sleep(ctx, seconds, woke, 0)) {
            refused = roost_last_error(ctx);
            break;
        }
        started++;
    }
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_map(&w, 2);
    roost_mp_cstr(&w, "started");
    roost_mp_int(&w, started);
    roost_mp_cstr(&w, "error");
    roost_mp_str(&w, refused.ptr, refused.len);
    return roost_reply_mp(ctx, &w);
}

int roost_on_message(roost_ctx *ctx, const uint8_t *msg, size_t len) {
    if (op_is(msg, len, "big")) return big(ctx, (size_t)arg_number(msg, len, "size", 4));
    if (op_is(msg, len, "sleeps"))
        return sleeps(ctx, (int64_t)arg_number(msg, len, "n", 1),
                      arg_number(msg, len, "seconds", 7));
    return roost_fail(ctx, "unknown op");
}
