/* The native twin of tests/agents/probe/agent.py: behaviour chosen by the message,
 * either an op name ("count") or a map {"op": ..., ...}. */
#include "roost.h"

static bool op_is(roost_bytes op, const char *name) {
    roost_mp_reader r;
    roost_mp_value v;
    roost_mp_reader_init(&r, op.ptr, op.len);
    return roost_mp_read(&r, &v) && roost_mp_is_str(&v, name);
}

/* The msgpack value of `key` in the message map, or false. */
static bool arg(const uint8_t *msg, size_t len, const char *key, roost_bytes *raw) {
    size_t n = 0;
    while (key[n]) n++;
    return roost_mp_map_get(msg, len, key, n, raw);
}

/* A string or bin argument. */
static bool arg_bytes(const uint8_t *msg, size_t len, const char *key, roost_bytes *out) {
    roost_bytes raw;
    roost_mp_reader r;
    roost_mp_value v;
    if (!arg(msg, len, key, &raw)) return false;
    roost_mp_reader_init(&r, raw.ptr, raw.len);
    if (!roost_mp_read(&r, &v) || (v.type != ROOST_MP_STR && v.type != ROOST_MP_BIN)) return false;
    *out = (roost_bytes){v.ptr, v.len};
    return true;
}

static int64_t arg_int(const uint8_t *msg, size_t len, const char *key, int64_t fallback) {
    roost_bytes raw;
    roost_mp_reader r;
    roost_mp_value v;
    if (!arg(msg, len, key, &raw)) return fallback;
    roost_mp_reader_init(&r, raw.ptr, raw.len);
    if (!roost_mp_read(&r, &v)) return fallback;
    if (v.type == ROOST_MP_INT) return v.i;
    if (v.type == ROOST_MP_FLOAT) return (int64_t)v.f;
    return fallback;
}

static double arg_double(const uint8_t *msg, size_t len, const char *key) {
    roost_bytes raw;
    roost_mp_reader r;
    roost_mp_value v;
    if (!arg(msg, len, key, &raw)) return 0;
    roost_mp_reader_init(&r, raw.ptr, raw.len);
    if (!roost_mp_read(&r, &v)) return 0;
    return v.type == ROOST_MP_FLOAT ? v.f : (double)v.i;
}

static int reply_str(roost_ctx *ctx, const char *s) {
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_cstr(&w, s);
    return roost_reply_mp(ctx, &w);
}

static int reply_int(roost_ctx *ctx, int64_t n) {
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_int(&w, n);
    return roost_reply_mp(ctx, &w);
}

static int reply_error(roost_ctx *ctx, roost_str error) {
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_map(&w, 1);
    roost_mp_cstr(&w, "error");
    roost_mp_str(&w, error.ptr, error.len);
    return roost_reply_mp(ctx, &w);
}

static int after_sleep(roost_ctx *ctx, const roost_op_result *result, void *user) {
    (void)user;
    if (!result->ok) return roost_fail_n(ctx, result->error.ptr, result->error.len);
    int64_t slept = roost_state_int(ctx, "slept", 0) + 1;
    roost_state_set_int(ctx, "slept", slept);
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_map(&w, 1);
    roost_mp_cstr(&w, "after");
    roost_mp_int(&w, slept);
    return roost_reply_mp(ctx, &w);
}

static double g_second_sleep;

static int after_second_sleep(roost_ctx *ctx, const roost_op_result *result, void *user) {
    (void)result;
    (void)user;
    return reply_str(ctx, "twice");
}

static int after_first_sleep(roost_ctx *ctx, const roost_op_result *result, void *user) {
    (void)result;
    (void)user;
    if (!roost_sleep(ctx, g_second_sleep, after_second_sleep, 0)) return ROOST_ERR;
    return ROOST_OK;
}

int roost_on_message(roost_ctx *ctx, const uint8_t *msg, size_t len) {
    roost_bytes op = {msg, len};
    roost_mp_reader r;
    roost_mp_value head;
    roost_mp_reader_init(&r, msg, len);
    if (roost_mp_read(&r, &head) && head.type == ROOST_MP_MAP && !arg(msg, len, "op", &op))
        return roost_fail(ctx, "a map message needs an op");

    if (op_is(op, "count")) {
        int64_t count = roost_state_int(ctx, "count", 0) + 1;
        roost_state_set_int(ctx, "count", count);
        return reply_int(ctx, count);
    }
    if (op_is(op, "kv_set") || op_is(op, "kv_try_set") || op_is(op, "kv_set_then_raise")) {
        roost_bytes key, value;
        if (!arg_bytes(msg, len, "key", &key) || !arg_bytes(msg, len, "value", &value))
            return roost_fail(ctx, "kv_set needs a key and a value");
        int rc = roost_kv_set(ctx, (const char *)key.ptr, key.len, value.ptr, value.len);
        if (op_is(op, "kv_try_set"))
            return rc == ROOST_OK ? reply_str(ctx, "ok") : reply_error(ctx, roost_last_error(ctx));
        if (rc != ROOST_OK) {
            roost_str why = roost_last_error(ctx);
            return roost_fail_n(ctx, why.ptr, why.len);
        }
        if (op_is(op, "kv_set_then_raise")) {
            roost_state_set_int(ctx, "count", roost_state_int(ctx, "count", 0) + 1000);
            return roost_fail(ctx, "boom after writing");
        }
        return reply_str(ctx, "ok");
    }
    if (op_is(op, "kv_get")) {
        roost_bytes key, value;
        if (!arg_bytes(msg, len, "key", &key)) return roost_fail(ctx, "kv_get needs a key");
        roost_mp w;
        roost_mp_init(&w);
        if (roost_kv_get(ctx, (const char *)key.ptr, key.len, &value))
            roost_mp_bin(&w, value.ptr, value.len);
        else
            roost_mp_nil(&w);
        return roost_reply_mp(ctx, &w);
    }
    if (op_is(op, "kv_delete")) {
        roost_bytes key;
        if (!arg_bytes(msg, len, "key", &key)) return roost_fail(ctx, "kv_delete needs a key");
        roost_kv_delete(ctx, (const char *)key.ptr, key.len);
        return reply_str(ctx, "ok");
    }
    if (op_is(op, "kv_keys")) {
        roost_bytes prefix = {(const uint8_t *)"", 0};
        arg_bytes(msg, len, "prefix", &prefix);
        roost_str *keys;
        size_t n = roost_kv_keys(ctx, (const char *)prefix.ptr, prefix.len, 1000, &keys);
        roost_mp w;
        roost_mp_init(&w);
        roost_mp_array(&w, (uint32_t)n);
        for (size_t i = 0; i < n; i++) roost_mp_str(&w, keys[i].ptr, keys[i].len);
        return roost_reply_mp(ctx, &w);
    }
    if (op_is(op, "spin")) { /* busy for `count` iterations, logging before and after */
        roost_log_cstr(ctx, ROOST_INFO, "spin start");
        volatile uint64_t spins = 0;
        int64_t count = arg_int(msg, len, "count", 0);
        for (int64_t i = 0; i < count; i++) spins++;
        int64_t spun = roost_state_int(ctx, "spun", 0) + 1;
        roost_state_set_int(ctx, "spun", spun);
        roost_log_cstr(ctx, ROOST_INFO, "spin done");
        return reply_int(ctx, spun);
    }
    if (op_is(op, "raise")) return roost_fail(ctx, "the probe was asked to fail");
    if (op_is(op, "loop")) {
        volatile uint64_t spins = 0;
        for (;;) spins++;
    }
    if (op_is(op, "bomb")) { /* hoard 8 MiB blocks until the memory limit says no */
        for (;;) {
            uint8_t *block = roost_alloc(8u << 20);
            if (!block) return roost_fail(ctx, "out of memory: roost_alloc returned NULL");
            block[0] = 1;
        }
    }
    if (op_is(op, "grow")) { /* grow linear memory directly until it fails */
        while (__builtin_wasm_memory_grow(0, 16) != (size_t)-1) {
        }
        return reply_int(ctx, (int64_t)__builtin_wasm_memory_size(0) * 65536);
    }
    if (op_is(op, "big_state") || op_is(op, "big_reply")) {
        int64_t size = arg_int(msg, len, "size", 0);
        uint8_t *text = roost_turn_alloc((size_t)size);
        if (!text) return roost_fail(ctx, "out of memory");
        for (int64_t i = 0; i < size; i++) text[i] = op_is(op, "big_state") ? 'x' : 'y';
        roost_mp w;
        roost_mp_init(&w);
        roost_mp_str(&w, (const char *)text, (size_t)size);
        if (op_is(op, "big_reply")) return roost_reply_mp(ctx, &w);
        if (w.failed || roost_state_set(ctx, "blob", w.buf, w.len) != ROOST_OK) return ROOST_ERR;
        return reply_str(ctx, "ok");
    }
    if (op_is(op, "sleep")) {
        reply_str(ctx, "before");
        if (!roost_sleep(ctx, arg_double(msg, len, "seconds"), after_sleep, 0)) {
            roost_str why = roost_last_error(ctx);
            return roost_fail_n(ctx, why.ptr, why.len);
        }
        return ROOST_OK;
    }
    if (op_is(op, "sleep_twice")) {
        g_second_sleep = arg_double(msg, len, "seconds");
        if (!roost_sleep(ctx, g_second_sleep, after_first_sleep, 0)) return ROOST_ERR;
        return ROOST_OK;
    }
    if (op_is(op, "sleep_bad")) {
        if (roost_sleep(ctx, -1, after_sleep, 0)) return roost_fail(ctx, "sleep(-1) was accepted");
        return reply_error(ctx, roost_last_error(ctx));
    }
    if (op_is(op, "env")) {
        uint8_t bytes[4];
        roost_random(ctx, bytes, sizeof bytes);
        uint32_t number = (uint32_t)bytes[0] | (uint32_t)bytes[1] << 8 |
                          (uint32_t)bytes[2] << 16 | (uint32_t)bytes[3] << 24;
        roost_str kind = roost_kind(ctx), id = roost_agent_id(ctx);
        roost_bytes config = roost_config(ctx);
        roost_mp address;
        roost_mp_init(&address);
        roost_mp_raw(&address, (const uint8_t *)kind.ptr, kind.len);
        roost_mp_raw(&address, (const uint8_t *)"/", 1);
        roost_mp_raw(&address, (const uint8_t *)id.ptr, id.len);
        roost_mp w;
        roost_mp_init(&w);
        roost_mp_map(&w, 4);
        roost_mp_cstr(&w, "now");
        roost_mp_double(&w, roost_now(ctx));
        roost_mp_cstr(&w, "random");
        roost_mp_uint(&w, number % 1000000 + 1);
        roost_mp_cstr(&w, "address");
        roost_mp_str(&w, (const char *)address.buf, address.len);
        roost_mp_cstr(&w, "config");
        roost_mp_raw(&w, config.ptr, config.len);
        roost_log_cstr(ctx, ROOST_INFO, "env asked");
        return roost_reply_mp(ctx, &w);
    }
    return roost_fail(ctx, "unknown op");
}
