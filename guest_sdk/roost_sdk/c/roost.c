/* roost.c: the canonical ABI of the roost:agent@0.1.0 world, by hand, for C and Zig agents.
 *
 * Compiled for wasm32-freestanding (no libc, no WASI) together with the agent; `wasm-tools
 * component new` then wraps the core module into a component. What the core module must
 * look like (the names wit-component expects for this world):
 *
 *   exports  init         (config: list<u8>, state: option<list<u8>>) -> result<_, string>
 *                         core: (i32 ptr, i32 len, i32 is_some, i32 ptr, i32 len) -> i32 retptr
 *            on-event     (event: record {id: u64, kind: string, payload: list<u8>})
 *                         core: (i64, i32, i32, i32, i32) -> i32 retptr
 *            on-complete  (op: u64, outcome: variant {ok(list<u8>), err(string)})
 *                         core: (i64, i32 tag, i32 ptr, i32 len) -> i32 retptr
 *            cabi_post_<name> (i32 retptr): the host has read the result; free the turn
 *            cabi_realloc (old, old_size, align, new_size) -> ptr: the host's allocations
 *            memory
 *   imports  roost:agent/<capability>@0.1.0 <function>, lowered as below.
 *
 * Return areas (little endian, natural alignment):
 *   result<_, string>            tag u8 @0, string ptr @4, len @8
 *   result<turn-output, string>  tag u8 @0, turn-output @4:
 *       replies list<reply> @4 (ptr, len); reply = {event u64 @0, payload ptr @8, len @12}
 *       done list<u64> @12 (ptr, len); state option<list<u8>> @20 (tag u8, ptr @24, len @28)
 *   option<list<u8>>             tag u8 @0, ptr @4, len @8
 *   result<u64, string>          tag u8 @0, u64 @8 | string ptr @8, len @12
 *   list<string>                 ptr @0, len @4; elements (ptr, len)
 *
 * Memory: a small size-class heap for data that outlives a call (state, config, pending
 * ops) and a turn arena on top of it for everything that crosses the ABI; the arena is
 * freed in the post-return functions, after the host has copied the results out.
 */
#include "roost.h"

#define ROOST_EXPORT(name) __attribute__((export_name(name)))
#define ROOST_IMPORT(iface, name) \
    __attribute__((import_module("roost:agent/" iface "@0.1.0"), import_name(name)))

#define OOM_MESSAGE "out of memory: the agent reached its linear memory limit (limits.max_memory_bytes)"

/* ---- imports ------------------------------------------------------------------------------ */

ROOST_IMPORT("kv", "get") extern void roost__kv_get(const char *key, size_t key_len, void *ret);
ROOST_IMPORT("kv", "set")
extern void roost__kv_set(const char *key, size_t key_len, const uint8_t *value, size_t len,
                          void *ret);
ROOST_IMPORT("kv", "delete") extern void roost__kv_delete(const char *key, size_t key_len);
ROOST_IMPORT("kv", "keys")
extern void roost__kv_keys(const char *prefix, size_t prefix_len, uint32_t limit, void *ret);
ROOST_IMPORT("clock", "now") extern double roost__clock_now(void);
ROOST_IMPORT("random", "bytes") extern void roost__random_bytes(uint32_t len, void *ret);
ROOST_IMPORT("log", "write")
extern void roost__log_write(int32_t level, const char *message, size_t len);
ROOST_IMPORT("timers", "sleep") extern void roost__timers_sleep(double seconds, void *ret);
ROOST_IMPORT("llm", "chat")
extern void roost__llm_chat(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("llm", "embed")
extern void roost__llm_embed(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("mcp", "list-tools")
extern void roost__mcp_list_tools(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("mcp", "call-tool")
extern void roost__mcp_call_tool(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("mcp", "list-resources")
extern void roost__mcp_list_resources(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("mcp", "read-resource")
extern void roost__mcp_read_resource(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("approval", "request")
extern void roost__approval_request(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("http", "fetch")
extern void roost__http_fetch(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("agents", "ask")
extern void roost__agents_ask(const uint8_t *request, size_t len, void *ret);
ROOST_IMPORT("agents", "send")
extern void roost__agents_send(const char *kind, size_t kind_len, const char *id, size_t id_len,
                               const uint8_t *message, size_t len, void *ret);

/* ---- bytes -------------------------------------------------------------------------------- */

static void mem_copy(void *dst, const void *src, size_t n) {
    if (n) __builtin_memcpy(dst, src, n);
}

static bool mem_equal(const void *a, const void *b, size_t n) {
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return false;
    return true;
}

static size_t cstr_len(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

/* ---- the heap ----------------------------------------------------------------------------- */
/* Power-of-two size classes from 16 bytes, an 8-byte header holding the class, one free list
 * per class, fresh blocks carved from the end of linear memory (grown on demand). */

#define HEAP_CLASSES 28
#define HEAP_MIN_SHIFT 4
#define HEAP_HEADER 8u
#define HEAP_LIVE 0x524f4f53u /* "ROOS" */
#define HEAP_FREE 0x46524545u /* "FREE" */

extern uint8_t __heap_base;

typedef struct heap_block {
    uint32_t klass;
    uint32_t mark;
} heap_block;

static void *g_free_lists[HEAP_CLASSES];
static uintptr_t g_heap_top;

static bool heap_reserve(uintptr_t end) {
    uintptr_t limit = __builtin_wasm_memory_size(0) * 65536u;
    if (end <= limit) return true;
    uintptr_t pages = (end - limit) / 65536u + ((end - limit) % 65536u != 0);
    return __builtin_wasm_memory_grow(0, pages) != (size_t)-1;
}

void *roost_alloc(size_t size) {
    if (size > ((size_t)1 << (HEAP_CLASSES + HEAP_MIN_SHIFT - 1)) - HEAP_HEADER) return 0;
    size_t need = size + HEAP_HEADER;
    uint32_t klass = 0;
    while (((size_t)1 << (klass + HEAP_MIN_SHIFT)) < need) klass++;
    heap_block *block = g_free_lists[klass];
    if (block) {
        g_free_lists[klass] = *(void **)(block + 1);
    } else {
        if (!g_heap_top) g_heap_top = ((uintptr_t)&__heap_base + 15u) & ~(uintptr_t)15u;
        uintptr_t bytes = (uintptr_t)1 << (klass + HEAP_MIN_SHIFT);
        if (g_heap_top + bytes < g_heap_top || !heap_reserve(g_heap_top + bytes)) return 0;
        block = (heap_block *)g_heap_top;
        g_heap_top += bytes;
        block->klass = klass;
    }
    block->mark = HEAP_LIVE;
    return block + 1;
}

void roost_free(void *ptr) {
    if (!ptr) return;
    heap_block *block = (heap_block *)ptr - 1;
    if (block->mark != HEAP_LIVE || block->klass >= HEAP_CLASSES) __builtin_trap();
    block->mark = HEAP_FREE;
    *(void **)ptr = g_free_lists[block->klass];
    g_free_lists[block->klass] = block;
}

static size_t heap_capacity(void *ptr) {
    heap_block *block = (heap_block *)ptr - 1;
    return ((size_t)1 << (block->klass + HEAP_MIN_SHIFT)) - HEAP_HEADER;
}

void *roost_realloc(void *ptr, size_t size) {
    if (!ptr) return roost_alloc(size);
    size_t have = heap_capacity(ptr);
    if (size <= have) return ptr;
    void *grown = roost_alloc(size);
    if (!grown) return 0;
    mem_copy(grown, ptr, have);
    roost_free(ptr);
    return grown;
}

/* ---- the turn arena ------------------------------------------------------------------------ */
/* Every allocation is a heap block linked into a list, freed as a whole after the call. */

typedef struct arena_node {
    struct arena_node *next;
    uint32_t pad;
} arena_node;

static arena_node *g_arena;
static bool g_oom;

void *roost_turn_alloc(size_t size) {
    if (size > (size_t)-1 - sizeof(arena_node)) return 0;
    arena_node *node = roost_alloc(size + sizeof(arena_node));
    if (!node) {
        g_oom = true;
        return 0;
    }
    node->next = g_arena;
    g_arena = node;
    return node + 1;
}

static void arena_reset(void) {
    arena_node *node = g_arena;
    while (node) {
        arena_node *next = node->next;
        roost_free(node);
        node = next;
    }
    g_arena = 0;
}

static void *arena_copy(const void *src, size_t len) {
    void *dst = roost_turn_alloc(len ? len : 1);
    if (dst) mem_copy(dst, src, len);
    return dst;
}

ROOST_EXPORT("cabi_realloc")
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    if (align > 8) __builtin_trap();
    if (new_size == 0) return (void *)align;
    void *fresh = roost_turn_alloc(new_size);
    if (!fresh) __builtin_trap(); /* out of linear memory while the host lowers a value */
    if (old) mem_copy(fresh, old, old_size < new_size ? old_size : new_size);
    return fresh;
}

/* ---- growable arrays in the arena ------------------------------------------------------------ */

typedef struct {
    void *items;
    size_t len;
    size_t cap;
} arena_vec;

static void *vec_push(arena_vec *v, size_t item_size) {
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        void *items = roost_turn_alloc(cap * item_size);
        if (!items) return 0;
        mem_copy(items, v->items, v->len * item_size);
        v->items = items;
        v->cap = cap;
    }
    return (uint8_t *)v->items + item_size * v->len++;
}

/* ---- agent state that outlives calls ---------------------------------------------------------- */

typedef struct {
    uint64_t event;
    const uint8_t *payload;
    size_t len;
} abi_reply; /* the canonical ABI layout of `reply`: 16 bytes, align 8 */

typedef struct {
    uint64_t op;
    uint64_t event;
    roost_op_callback done;
    void *user;
} pending_op;

struct roost_ctx {
    uint64_t event; /* the event being handled; 0 while starting */
    bool failed;
    roost_str error; /* why the turn failed */
    roost_str last_error; /* the last failed host call */
    arena_vec replies; /* abi_reply */
    arena_vec done; /* uint64_t */
};

static roost_ctx g_ctx;
static uint8_t *g_config;
static size_t g_config_len;
static uint8_t *g_state;
static size_t g_state_len;
static bool g_state_dirty;
static bool g_ready;
static pending_op *g_ops;
static size_t g_ops_len;
static size_t g_ops_cap;

static _Alignas(8) uint8_t g_ret[32];

/* ---- failing --------------------------------------------------------------------------------- */

int roost_fail_n(roost_ctx *ctx, const char *message, size_t len) {
    if (!ctx->failed) {
        ctx->failed = true;
        char *copy = arena_copy(message, len);
        ctx->error.ptr = copy ? copy : OOM_MESSAGE;
        ctx->error.len = copy ? len : sizeof(OOM_MESSAGE) - 1;
    }
    return ROOST_ERR;
}

int roost_fail(roost_ctx *ctx, const char *message) {
    return roost_fail_n(ctx, message, cstr_len(message));
}

static int fail_oom(roost_ctx *ctx) {
    g_oom = true;
    return roost_fail(ctx, OOM_MESSAGE);
}

roost_str roost_last_error(roost_ctx *ctx) {
    return ctx->last_error;
}

/* The length of the valid UTF-8 prefix of `text`. */
static size_t utf8_prefix(const char *text, size_t len) {
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = n && i + n <= len;
        for (size_t k = 1; ok && k < n; k++) ok = (s[i + k] & 0xc0) == 0x80;
        if (ok && n == 2) ok = c >= 0xc2;
        if (ok && n == 3) {
            uint32_t cp = ((c & 0x0fu) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
            ok = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff);
        }
        if (ok && n == 4) {
            uint32_t cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3fu) << 12) |
                          ((s[i + 2] & 0x3fu) << 6) | (s[i + 3] & 0x3fu);
            ok = cp >= 0x10000 && cp <= 0x10ffff;
        }
        if (!ok) break;
        i += n;
    }
    return i;
}

/* Strings cross the ABI as UTF-8 (the host refuses anything else): invalid bytes become '?'. */
static roost_str utf8_sanitized(const char *text, size_t len) {
    size_t i = utf8_prefix(text, len);
    if (i == len) return (roost_str){text, len};
    char *copy = arena_copy(text, len);
    if (!copy) return (roost_str){"?", 1};
    for (size_t j = i; j < len; j++)
        if ((uint8_t)copy[j] >= 0x80) copy[j] = '?';
    return (roost_str){copy, len};
}

/* ---- results ----------------------------------------------------------------------------------- */

static void put_u32(uint8_t *at, uint32_t v) {
    mem_copy(at, &v, 4);
}

static void *ret_err(roost_ctx *ctx, const char *fallback) {
    roost_str text = ctx->failed ? ctx->error : (roost_str){fallback, cstr_len(fallback)};
    if (g_oom) text = (roost_str){OOM_MESSAGE, sizeof(OOM_MESSAGE) - 1};
    text = utf8_sanitized(text.ptr, text.len);
    g_ret[0] = 1;
    put_u32(g_ret + 4, (uint32_t)(uintptr_t)text.ptr);
    put_u32(g_ret + 8, (uint32_t)text.len);
    return g_ret;
}

static void begin_turn(uint64_t event) {
    g_ctx = (roost_ctx){0};
    g_ctx.event = event;
    g_oom = false;
}

static bool ops_pending_for(uint64_t event) {
    for (size_t i = 0; i < g_ops_len; i++)
        if (g_ops[i].event == event) return true;
    return false;
}

/* Finish a handler or callback that ran for `event`: the turn-output, or the error. */
static void *end_turn(int status, const char *what) {
    roost_ctx *ctx = &g_ctx;
    if (status != ROOST_OK || ctx->failed || g_oom) return ret_err(ctx, what);
    if (!ops_pending_for(ctx->event)) {
        uint64_t *done = vec_push(&ctx->done, sizeof(uint64_t));
        if (!done) return ret_err(ctx, OOM_MESSAGE);
        *done = ctx->event;
    }
    g_ret[0] = 0;
    put_u32(g_ret + 4, (uint32_t)(uintptr_t)ctx->replies.items);
    put_u32(g_ret + 8, (uint32_t)ctx->replies.len);
    put_u32(g_ret + 12, (uint32_t)(uintptr_t)ctx->done.items);
    put_u32(g_ret + 16, (uint32_t)ctx->done.len);
    g_ret[20] = g_state_dirty ? 1 : 0;
    put_u32(g_ret + 24, (uint32_t)(uintptr_t)g_state);
    put_u32(g_ret + 28, (uint32_t)g_state_len);
    g_state_dirty = false;
    return g_ret;
}

/* ---- exports ------------------------------------------------------------------------------------- */

static bool is_map(const uint8_t *data, size_t len) {
    return len > 0 && ((data[0] & 0xf0) == 0x80 || data[0] == 0xde || data[0] == 0xdf);
}

__attribute__((weak)) int roost_on_start(roost_ctx *ctx) {
    (void)ctx;
    return ROOST_OK;
}

__attribute__((weak)) int roost_on_timer(roost_ctx *ctx, const uint8_t *payload, size_t len) {
    (void)payload;
    (void)len;
    return roost_fail(ctx, "a timer fired but the agent defines no roost_on_timer");
}

__attribute__((weak)) int roost_on_continuation(roost_ctx *ctx, const uint8_t *payload,
                                                size_t len) {
    (void)payload;
    (void)len;
    return roost_fail(ctx, "an op result arrived in the continuation form but the agent "
                           "defines no roost_on_continuation");
}

__attribute__((weak)) int roost_on_agent_message(roost_ctx *ctx, roost_str sender,
                                                 const uint8_t *msg, size_t len) {
    (void)sender;
    (void)msg;
    (void)len;
    return roost_fail(ctx, "a message from an agent arrived but the agent defines no "
                           "roost_on_agent_message");
}

ROOST_EXPORT("init")
void *roost__init(uint8_t *config, size_t config_len, int32_t has_state, uint8_t *state,
                  size_t state_len) {
    begin_turn(0);
    roost_ctx *ctx = &g_ctx;
    static const uint8_t empty_map[1] = {0x80};
    if (!has_state || state_len == 0) {
        state = (uint8_t *)empty_map;
        state_len = 1;
    }
    if (!is_map(state, state_len)) {
        roost_fail(ctx, "the committed state is not a msgpack map");
        return ret_err(ctx, "");
    }
    roost_free(g_config);
    roost_free(g_state);
    g_config = roost_alloc(config_len ? config_len : 1);
    g_state = roost_alloc(state_len);
    if (!g_config || !g_state) return ret_err(ctx, OOM_MESSAGE);
    mem_copy(g_config, config, config_len);
    mem_copy(g_state, state, state_len);
    g_config_len = config_len;
    g_state_len = state_len;
    g_state_dirty = false;
    g_ready = true;
    int status = roost_on_start(ctx);
    if (status != ROOST_OK || ctx->failed || g_oom) return ret_err(ctx, "roost_on_start failed");
    g_ret[0] = 0;
    return g_ret;
}

static bool str_is(const uint8_t *ptr, size_t len, const char *s) {
    size_t n = cstr_len(s);
    return len == n && mem_equal(ptr, s, n);
}

ROOST_EXPORT("on-event")
void *roost__on_event(uint64_t id, const uint8_t *kind, size_t kind_len, const uint8_t *payload,
                      size_t payload_len) {
    begin_turn(id);
    roost_ctx *ctx = &g_ctx;
    if (!g_ready) {
        roost_fail(ctx, "the host called on-event before init");
        return end_turn(ROOST_ERR, "");
    }
    int status;
    if (str_is(kind, kind_len, "message")) {
        status = roost_on_message(ctx, payload, payload_len);
        return end_turn(status, "roost_on_message failed");
    }
    if (str_is(kind, kind_len, "timer")) {
        status = roost_on_timer(ctx, payload, payload_len);
        return end_turn(status, "roost_on_timer failed");
    }
    if (str_is(kind, kind_len, "agent")) {
        roost_bytes sender_raw, message;
        roost_mp_reader r;
        roost_mp_value sender;
        if (!roost_mp_map_get(payload, payload_len, "sender", 6, &sender_raw) ||
            !roost_mp_map_get(payload, payload_len, "message", 7, &message)) {
            roost_fail(ctx, "an agent event without sender and message");
            return end_turn(ROOST_ERR, "");
        }
        roost_mp_reader_init(&r, sender_raw.ptr, sender_raw.len);
        if (!roost_mp_read(&r, &sender) || sender.type != ROOST_MP_STR) {
            roost_fail(ctx, "an agent event whose sender is not a string");
            return end_turn(ROOST_ERR, "");
        }
        roost_str from = {(const char *)sender.ptr, sender.len};
        status = roost_on_agent_message(ctx, from, message.ptr, message.len);
        return end_turn(status, "roost_on_agent_message failed");
    }
    if (str_is(kind, kind_len, "continuation")) {
        status = roost_on_continuation(ctx, payload, payload_len);
        return end_turn(status, "roost_on_continuation failed");
    }
    roost_fail(ctx, "unknown event kind");
    return end_turn(ROOST_ERR, "");
}

ROOST_EXPORT("on-complete")
void *roost__on_complete(uint64_t op, int32_t tag, const uint8_t *ptr, size_t len) {
    size_t i = 0;
    while (i < g_ops_len && g_ops[i].op != op) i++;
    if (i == g_ops_len) {
        begin_turn(0);
        roost_fail(&g_ctx, "on-complete for an op this agent did not start");
        return ret_err(&g_ctx, "");
    }
    pending_op pending = g_ops[i];
    g_ops[i] = g_ops[--g_ops_len];
    begin_turn(pending.event);
    roost_op_result result = {0};
    result.ok = tag == 0;
    if (result.ok)
        result.value = (roost_bytes){ptr, len};
    else
        result.error = (roost_str){(const char *)ptr, len};
    int status = pending.done(&g_ctx, &result, pending.user);
    return end_turn(status, "an async op callback failed");
}

ROOST_EXPORT("cabi_post_init") void roost__post_init(void *ret) {
    (void)ret;
    arena_reset();
}

ROOST_EXPORT("cabi_post_on-event") void roost__post_on_event(void *ret) {
    (void)ret;
    arena_reset();
}

ROOST_EXPORT("cabi_post_on-complete") void roost__post_on_complete(void *ret) {
    (void)ret;
    arena_reset();
}

/* ---- the turn --------------------------------------------------------------------------------- */

static roost_str config_str(const char *key) {
    roost_bytes raw;
    roost_mp_reader r;
    roost_mp_value v;
    if (!roost_mp_map_get(g_config, g_config_len, key, cstr_len(key), &raw)) return (roost_str){"", 0};
    roost_mp_reader_init(&r, raw.ptr, raw.len);
    if (!roost_mp_read(&r, &v) || v.type != ROOST_MP_STR) return (roost_str){"", 0};
    return (roost_str){(const char *)v.ptr, v.len};
}

roost_str roost_kind(roost_ctx *ctx) {
    (void)ctx;
    return config_str("kind");
}

roost_str roost_agent_id(roost_ctx *ctx) {
    (void)ctx;
    return config_str("id");
}

roost_bytes roost_config(roost_ctx *ctx) {
    (void)ctx;
    static const uint8_t empty_map[1] = {0x80};
    roost_bytes raw;
    if (!roost_mp_map_get(g_config, g_config_len, "config", 6, &raw)) return (roost_bytes){empty_map, 1};
    return raw;
}

int roost_reply(roost_ctx *ctx, const uint8_t *payload, size_t len) {
    if (ctx->event == 0) return roost_fail(ctx, "roost_reply may only be called while handling an event");
    uint8_t *copy = arena_copy(payload, len);
    abi_reply *reply = copy ? vec_push(&ctx->replies, sizeof(abi_reply)) : 0;
    if (!reply) return fail_oom(ctx);
    reply->event = ctx->event;
    reply->payload = copy;
    reply->len = len;
    return ROOST_OK;
}

/* ---- state ------------------------------------------------------------------------------------- */

roost_bytes roost_state(roost_ctx *ctx) {
    (void)ctx;
    return (roost_bytes){g_state, g_state_len};
}

int roost_set_state(roost_ctx *ctx, const uint8_t *map, size_t len) {
    if (!is_map(map, len)) return roost_fail(ctx, "the state must be a msgpack map");
    if (len == g_state_len && mem_equal(map, g_state, len)) return ROOST_OK;
    uint8_t *copy = roost_alloc(len);
    if (!copy) return fail_oom(ctx);
    mem_copy(copy, map, len);
    roost_free(g_state);
    g_state = copy;
    g_state_len = len;
    g_state_dirty = true;
    return ROOST_OK;
}

bool roost_state_get(roost_ctx *ctx, const char *key, roost_bytes *value) {
    (void)ctx;
    return roost_mp_map_get(g_state, g_state_len, key, cstr_len(key), value);
}

/* Rewrite the state map without `key`, then with `value` under it when `value` is given. */
static int state_rewrite(roost_ctx *ctx, const char *key, const uint8_t *value, size_t len,
                         bool *found) {
    size_t key_len = cstr_len(key);
    roost_mp_reader r;
    roost_mp_value head, k;
    roost_bytes raw_key, raw_value;
    roost_mp_reader_init(&r, g_state, g_state_len);
    if (!roost_mp_read(&r, &head) || head.type != ROOST_MP_MAP)
        return roost_fail(ctx, "the state is not a msgpack map");
    uint32_t kept = 0;
    *found = false;
    size_t start = r.pos;
    for (uint32_t i = 0; i < head.count; i++) {
        roost_mp_reader probe = r;
        if (!roost_mp_read(&probe, &k) || !roost_mp_skip(&r) || !roost_mp_skip(&r))
            return roost_fail(ctx, "the state is not valid msgpack");
        if (k.type == ROOST_MP_STR && k.len == key_len && mem_equal(k.ptr, key, key_len))
            *found = true;
        else
            kept++;
    }
    roost_mp w;
    roost_mp_init(&w);
    roost_mp_map(&w, kept + (value ? 1 : 0));
    r.pos = start;
    for (uint32_t i = 0; i < head.count; i++) {
        roost_mp_reader probe = r;
        roost_mp_read(&probe, &k);
        roost_mp_read_raw(&r, &raw_key);
        roost_mp_read_raw(&r, &raw_value);
        if (k.type == ROOST_MP_STR && k.len == key_len && mem_equal(k.ptr, key, key_len)) continue;
        roost_mp_raw(&w, raw_key.ptr, raw_key.len);
        roost_mp_raw(&w, raw_value.ptr, raw_value.len);
    }
    if (value) {
        roost_mp_str(&w, key, key_len);
        roost_mp_raw(&w, value, len);
    }
    if (w.failed) return fail_oom(ctx);
    return roost_set_state(ctx, w.buf, w.len);
}

int roost_state_set(roost_ctx *ctx, const char *key, const uint8_t *value, size_t len) {
    bool found;
    roost_mp_reader r;
    roost_mp_reader_init(&r, value, len);
    if (!roost_mp_skip(&r) || r.pos != len)
        return roost_fail(ctx, "roost_state_set: the value is not one msgpack value");
    return state_rewrite(ctx, key, value, len, &found);
}

bool roost_state_remove(roost_ctx *ctx, const char *key) {
    bool found = false;
    if (!roost_state_get(ctx, key, &(roost_bytes){0})) return false;
    state_rewrite(ctx, key, 0, 0, &found);
    return found;
}

int64_t roost_state_int(roost_ctx *ctx, const char *key, int64_t fallback) {
    roost_bytes raw;
    roost_mp_reader r;
    roost_mp_value v;
    if (!roost_state_get(ctx, key, &raw)) return fallback;
    roost_mp_reader_init(&r, raw.ptr, raw.len);
    if (!roost_mp_read(&r, &v) || v.type != ROOST_MP_INT) return fallback;
    return v.i;
}

int roost_state_set_int(roost_ctx *ctx, const char *key, int64_t value) {
    uint8_t buf[9];
    roost_mp w = {buf, 0, sizeof buf, false};
    roost_mp_int(&w, value);
    return roost_state_set(ctx, key, w.buf, w.len);
}

int roost_set_state_mp(roost_ctx *ctx, const roost_mp *w) {
    if (w->failed) return fail_oom(ctx);
    return roost_set_state(ctx, w->buf, w->len);
}

int roost_reply_mp(roost_ctx *ctx, const roost_mp *w) {
    if (w->failed) return fail_oom(ctx);
    return roost_reply(ctx, w->buf, w->len);
}

/* ---- capabilities ---------------------------------------------------------------------------- */

static uint32_t get_u32(const uint8_t *at) {
    uint32_t v;
    mem_copy(&v, at, 4);
    return v;
}

/* Strings the agent names (kv keys, agent ids) must be UTF-8; refuse them here, not in the
 * host, where they would break the ABI and fail the turn. */
static bool refuse_non_utf8(roost_ctx *ctx, const char *text, size_t len) {
    if (utf8_prefix(text, len) == len) return false;
    static const char why[] = "kv keys and agent addresses must be UTF-8";
    ctx->last_error = (roost_str){why, sizeof why - 1};
    return true;
}

bool roost_kv_get(roost_ctx *ctx, const char *key, size_t key_len, roost_bytes *value) {
    if (refuse_non_utf8(ctx, key, key_len)) return false;
    _Alignas(4) uint8_t ret[12];
    roost__kv_get(key, key_len, ret);
    if (ret[0] == 0) return false;
    value->ptr = (const uint8_t *)(uintptr_t)get_u32(ret + 4);
    value->len = get_u32(ret + 8);
    return true;
}

int roost_kv_set(roost_ctx *ctx, const char *key, size_t key_len, const uint8_t *value,
                 size_t len) {
    if (refuse_non_utf8(ctx, key, key_len)) return ROOST_ERR;
    _Alignas(4) uint8_t ret[12];
    roost__kv_set(key, key_len, value, len, ret);
    if (ret[0] == 0) return ROOST_OK;
    ctx->last_error.ptr = (const char *)(uintptr_t)get_u32(ret + 4);
    ctx->last_error.len = get_u32(ret + 8);
    return ROOST_ERR;
}

void roost_kv_delete(roost_ctx *ctx, const char *key, size_t key_len) {
    if (refuse_non_utf8(ctx, key, key_len)) return;
    roost__kv_delete(key, key_len);
}

size_t roost_kv_keys(roost_ctx *ctx, const char *prefix, size_t prefix_len, uint32_t limit,
                     roost_str **keys) {
    *keys = 0;
    if (refuse_non_utf8(ctx, prefix, prefix_len)) return 0;
    _Alignas(4) uint8_t ret[8];
    roost__kv_keys(prefix, prefix_len, limit, ret);
    *keys = (roost_str *)(uintptr_t)get_u32(ret); /* (ptr, len) pairs: roost_str's layout */
    return get_u32(ret + 4);
}

double roost_now(roost_ctx *ctx) {
    (void)ctx;
    return roost__clock_now();
}

void roost_random(roost_ctx *ctx, uint8_t *buf, size_t len) {
    (void)ctx;
    while (len) {
        uint32_t chunk = len > 65536 ? 65536 : (uint32_t)len;
        _Alignas(4) uint8_t ret[8];
        roost__random_bytes(chunk, ret);
        uint32_t got = get_u32(ret + 4);
        if (got > chunk) got = chunk;
        if (got == 0) __builtin_trap(); /* the host refused: never hand out unfilled bytes */
        mem_copy(buf, (const void *)(uintptr_t)get_u32(ret), got);
        buf += got;
        len -= got;
    }
}

void roost_log(roost_ctx *ctx, roost_level level, const char *message, size_t len) {
    (void)ctx;
    roost_str text = utf8_sanitized(message, len);
    roost__log_write((int32_t)level, text.ptr, text.len);
}

void roost_log_cstr(roost_ctx *ctx, roost_level level, const char *message) {
    roost_log(ctx, level, message, cstr_len(message));
}

/* Make room for one more pending op; false (and the turn failed) when there is none. */
static bool ops_reserve(roost_ctx *ctx) {
    if (ctx->event == 0) {
        roost_fail(ctx, "async ops may only be started while handling an event");
        return false;
    }
    if (g_ops_len < g_ops_cap) return true;
    size_t cap = g_ops_cap ? g_ops_cap * 2 : 4;
    pending_op *ops = roost_realloc(g_ops, cap * sizeof(pending_op));
    if (!ops) {
        fail_oom(ctx);
        return false;
    }
    g_ops = ops;
    g_ops_cap = cap;
    return true;
}

/* Read a result<op-id, string> return area: the op id (tracked for `done` unless that is
 * NULL), or 0 when the host refused. */
static uint64_t ops_track(roost_ctx *ctx, const uint8_t *ret, roost_op_callback done, void *user) {
    if (ret[0] != 0) {
        ctx->last_error.ptr = (const char *)(uintptr_t)get_u32(ret + 8);
        ctx->last_error.len = get_u32(ret + 12);
        return 0;
    }
    uint64_t op;
    mem_copy(&op, ret + 8, 8);
    if (done) g_ops[g_ops_len++] = (pending_op){op, ctx->event, done, user};
    return op;
}

uint64_t roost_sleep(roost_ctx *ctx, double seconds, roost_op_callback done, void *user) {
    if (!done) {
        roost_fail(ctx, "roost_sleep needs a completion callback");
        return 0;
    }
    if (!ops_reserve(ctx)) return 0;
    _Alignas(8) uint8_t ret[16];
    roost__timers_sleep(seconds, ret);
    return ops_track(ctx, ret, done, user);
}

typedef void (*op_import)(const uint8_t *request, size_t len, void *ret);

/* Requests with "then" are the continuation form: nothing to wait for in this event. */
static uint64_t start_op(roost_ctx *ctx, op_import start, const uint8_t *request, size_t len,
                         roost_op_callback done, void *user) {
    roost_bytes then;
    bool continuation = roost_mp_map_get(request, len, "then", 4, &then);
    if (!continuation && !done) {
        roost_fail(ctx, "an async op needs a completion callback (or \"then\" in its request)");
        return 0;
    }
    if (!ops_reserve(ctx)) return 0;
    _Alignas(8) uint8_t ret[16];
    start(request, len, ret);
    return ops_track(ctx, ret, continuation ? 0 : done, user);
}

uint64_t roost_llm_chat(roost_ctx *ctx, const uint8_t *request, size_t len,
                        roost_op_callback done, void *user) {
    return start_op(ctx, roost__llm_chat, request, len, done, user);
}

uint64_t roost_llm_embed(roost_ctx *ctx, const uint8_t *request, size_t len,
                         roost_op_callback done, void *user) {
    return start_op(ctx, roost__llm_embed, request, len, done, user);
}

uint64_t roost_mcp_list_tools(roost_ctx *ctx, const uint8_t *request, size_t len,
                              roost_op_callback done, void *user) {
    return start_op(ctx, roost__mcp_list_tools, request, len, done, user);
}

uint64_t roost_mcp_call_tool(roost_ctx *ctx, const uint8_t *request, size_t len,
                             roost_op_callback done, void *user) {
    return start_op(ctx, roost__mcp_call_tool, request, len, done, user);
}

uint64_t roost_mcp_list_resources(roost_ctx *ctx, const uint8_t *request, size_t len,
                                  roost_op_callback done, void *user) {
    return start_op(ctx, roost__mcp_list_resources, request, len, done, user);
}

uint64_t roost_mcp_read_resource(roost_ctx *ctx, const uint8_t *request, size_t len,
                                 roost_op_callback done, void *user) {
    return start_op(ctx, roost__mcp_read_resource, request, len, done, user);
}

uint64_t roost_approval_request(roost_ctx *ctx, const uint8_t *request, size_t len,
                                roost_op_callback done, void *user) {
    return start_op(ctx, roost__approval_request, request, len, done, user);
}

uint64_t roost_http_fetch(roost_ctx *ctx, const uint8_t *request, size_t len,
                          roost_op_callback done, void *user) {
    return start_op(ctx, roost__http_fetch, request, len, done, user);
}

uint64_t roost_agents_ask(roost_ctx *ctx, const uint8_t *request, size_t len,
                          roost_op_callback done, void *user) {
    return start_op(ctx, roost__agents_ask, request, len, done, user);
}

int roost_agents_send(roost_ctx *ctx, const char *kind, size_t kind_len, const char *id,
                      size_t id_len, const uint8_t *message, size_t len) {
    if (refuse_non_utf8(ctx, kind, kind_len) || refuse_non_utf8(ctx, id, id_len)) return ROOST_ERR;
    _Alignas(4) uint8_t ret[12];
    roost__agents_send(kind, kind_len, id, id_len, message, len, ret);
    if (ret[0] == 0) return ROOST_OK;
    ctx->last_error.ptr = (const char *)(uintptr_t)get_u32(ret + 4);
    ctx->last_error.len = get_u32(ret + 8);
    return ROOST_ERR;
}

/* ---- msgpack writer ---------------------------------------------------------------------------- */

void roost_mp_init(roost_mp *w) {
    *w = (roost_mp){0};
}

static uint8_t *mp_room(roost_mp *w, size_t n) {
    if (w->failed) return 0;
    if (w->cap - w->len < n) {
        size_t cap = w->cap ? w->cap : 64;
        while (cap - w->len < n) {
            if (cap > ((size_t)-1) / 2) {
                w->failed = true;
                return 0;
            }
            cap *= 2;
        }
        uint8_t *buf = roost_turn_alloc(cap);
        if (!buf) {
            w->failed = true;
            return 0;
        }
        mem_copy(buf, w->buf, w->len);
        w->buf = buf;
        w->cap = cap;
    }
    uint8_t *at = w->buf + w->len;
    w->len += n;
    return at;
}

static void mp_be(roost_mp *w, uint8_t tag, uint64_t v, size_t bytes) {
    uint8_t *at = mp_room(w, 1 + bytes);
    if (!at) return;
    at[0] = tag;
    for (size_t i = 0; i < bytes; i++) at[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

void roost_mp_nil(roost_mp *w) {
    uint8_t *at = mp_room(w, 1);
    if (at) *at = 0xc0;
}

void roost_mp_bool(roost_mp *w, bool value) {
    uint8_t *at = mp_room(w, 1);
    if (at) *at = value ? 0xc3 : 0xc2;
}

void roost_mp_uint(roost_mp *w, uint64_t v) {
    if (v < 0x80)
        mp_be(w, (uint8_t)v, 0, 0);
    else if (v <= 0xff)
        mp_be(w, 0xcc, v, 1);
    else if (v <= 0xffff)
        mp_be(w, 0xcd, v, 2);
    else if (v <= 0xffffffffu)
        mp_be(w, 0xce, v, 4);
    else
        mp_be(w, 0xcf, v, 8);
}

void roost_mp_int(roost_mp *w, int64_t v) {
    if (v >= 0)
        roost_mp_uint(w, (uint64_t)v);
    else if (v >= -32)
        mp_be(w, (uint8_t)(int8_t)v, 0, 0);
    else if (v >= -128)
        mp_be(w, 0xd0, (uint64_t)v, 1);
    else if (v >= -32768)
        mp_be(w, 0xd1, (uint64_t)v, 2);
    else if (v >= -2147483647 - 1)
        mp_be(w, 0xd2, (uint64_t)v, 4);
    else
        mp_be(w, 0xd3, (uint64_t)v, 8);
}

void roost_mp_double(roost_mp *w, double value) {
    uint64_t bits;
    mem_copy(&bits, &value, 8);
    mp_be(w, 0xcb, bits, 8);
}

static void mp_sized(roost_mp *w, const uint8_t *data, size_t len, uint8_t fix, uint8_t tag8,
                     uint8_t tag16, uint8_t tag32) {
    if (len > 0xffffffffu) {
        w->failed = true;
        return;
    }
    if (fix && len < 32)
        mp_be(w, (uint8_t)(fix | len), 0, 0);
    else if (len <= 0xff && tag8)
        mp_be(w, tag8, len, 1);
    else if (len <= 0xffff)
        mp_be(w, tag16, len, 2);
    else
        mp_be(w, tag32, len, 4);
    uint8_t *at = mp_room(w, len);
    if (at) mem_copy(at, data, len);
}

void roost_mp_str(roost_mp *w, const char *s, size_t len) {
    mp_sized(w, (const uint8_t *)s, len, 0xa0, 0xd9, 0xda, 0xdb);
}

void roost_mp_cstr(roost_mp *w, const char *s) {
    roost_mp_str(w, s, cstr_len(s));
}

void roost_mp_bin(roost_mp *w, const uint8_t *data, size_t len) {
    mp_sized(w, data, len, 0, 0xc4, 0xc5, 0xc6);
}

void roost_mp_array(roost_mp *w, uint32_t count) {
    if (count < 16)
        mp_be(w, (uint8_t)(0x90 | count), 0, 0);
    else if (count <= 0xffff)
        mp_be(w, 0xdc, count, 2);
    else
        mp_be(w, 0xdd, count, 4);
}

void roost_mp_map(roost_mp *w, uint32_t count) {
    if (count < 16)
        mp_be(w, (uint8_t)(0x80 | count), 0, 0);
    else if (count <= 0xffff)
        mp_be(w, 0xde, count, 2);
    else
        mp_be(w, 0xdf, count, 4);
}

void roost_mp_raw(roost_mp *w, const uint8_t *data, size_t len) {
    uint8_t *at = mp_room(w, len);
    if (at) mem_copy(at, data, len);
}

/* ---- msgpack reader ---------------------------------------------------------------------------- */

void roost_mp_reader_init(roost_mp_reader *r, const uint8_t *data, size_t len) {
    *r = (roost_mp_reader){data, len, 0, false};
}

static bool mp_take(roost_mp_reader *r, size_t n, const uint8_t **at) {
    if (r->len - r->pos < n) {
        r->failed = true;
        return false;
    }
    *at = r->ptr + r->pos;
    r->pos += n;
    return true;
}

static bool mp_uint_be(roost_mp_reader *r, size_t n, uint64_t *v) {
    const uint8_t *at;
    if (!mp_take(r, n, &at)) return false;
    *v = 0;
    for (size_t i = 0; i < n; i++) *v = (*v << 8) | at[i];
    return true;
}

static bool mp_bytes(roost_mp_reader *r, size_t len_bytes, roost_mp_value *v) {
    uint64_t len;
    const uint8_t *at;
    if (!mp_uint_be(r, len_bytes, &len) || !mp_take(r, (size_t)len, &at)) return false;
    v->ptr = at;
    v->len = (size_t)len;
    return true;
}

static bool mp_signed(roost_mp_reader *r, size_t n, roost_mp_value *v) {
    uint64_t raw;
    if (!mp_uint_be(r, n, &raw)) return false;
    unsigned shift = (unsigned)(64 - 8 * n);
    v->type = ROOST_MP_INT;
    v->i = shift ? (int64_t)(raw << shift) >> shift : (int64_t)raw;
    return true;
}

static bool mp_unsigned(roost_mp_reader *r, size_t n, roost_mp_value *v) {
    uint64_t raw;
    if (!mp_uint_be(r, n, &raw)) return false;
    v->u = raw;
    if (raw <= (uint64_t)INT64_MAX) {
        v->type = ROOST_MP_INT;
        v->i = (int64_t)raw;
    } else {
        v->type = ROOST_MP_UINT;
    }
    return true;
}

static bool mp_count(roost_mp_reader *r, size_t n, roost_mp_type type, roost_mp_value *v) {
    uint64_t count;
    if (!mp_uint_be(r, n, &count)) return false;
    v->type = type;
    v->count = (uint32_t)count;
    return true;
}

bool roost_mp_read(roost_mp_reader *r, roost_mp_value *v) {
    const uint8_t *at;
    if (r->failed || !mp_take(r, 1, &at)) return false;
    uint8_t b = *at;
    *v = (roost_mp_value){0};
    if (b <= 0x7f) {
        v->type = ROOST_MP_INT;
        v->i = b;
        v->u = b;
        return true;
    }
    if (b >= 0xe0) {
        v->type = ROOST_MP_INT;
        v->i = (int8_t)b;
        return true;
    }
    if ((b & 0xf0) == 0x80) {
        v->type = ROOST_MP_MAP;
        v->count = b & 0x0f;
        return true;
    }
    if ((b & 0xf0) == 0x90) {
        v->type = ROOST_MP_ARRAY;
        v->count = b & 0x0f;
        return true;
    }
    if ((b & 0xe0) == 0xa0) {
        v->type = ROOST_MP_STR;
        return mp_take(r, b & 0x1f, &v->ptr) && (v->len = b & 0x1f, true);
    }
    switch (b) {
    case 0xc0: v->type = ROOST_MP_NIL; return true;
    case 0xc2: v->type = ROOST_MP_BOOL; v->b = false; return true;
    case 0xc3: v->type = ROOST_MP_BOOL; v->b = true; return true;
    case 0xc4: v->type = ROOST_MP_BIN; return mp_bytes(r, 1, v);
    case 0xc5: v->type = ROOST_MP_BIN; return mp_bytes(r, 2, v);
    case 0xc6: v->type = ROOST_MP_BIN; return mp_bytes(r, 4, v);
    case 0xc7: case 0xc8: case 0xc9: {
        size_t n = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
        uint64_t len;
        if (!mp_uint_be(r, n, &len) || !mp_take(r, 1, &at) || !mp_take(r, (size_t)len, &v->ptr))
            return false;
        v->type = ROOST_MP_EXT;
        v->len = (size_t)len;
        return true;
    }
    case 0xca: {
        uint64_t raw;
        float f;
        uint32_t bits;
        if (!mp_uint_be(r, 4, &raw)) return false;
        bits = (uint32_t)raw;
        mem_copy(&f, &bits, 4);
        v->type = ROOST_MP_FLOAT;
        v->f = f;
        return true;
    }
    case 0xcb: {
        uint64_t raw;
        if (!mp_uint_be(r, 8, &raw)) return false;
        mem_copy(&v->f, &raw, 8);
        v->type = ROOST_MP_FLOAT;
        return true;
    }
    case 0xcc: return mp_unsigned(r, 1, v);
    case 0xcd: return mp_unsigned(r, 2, v);
    case 0xce: return mp_unsigned(r, 4, v);
    case 0xcf: return mp_unsigned(r, 8, v);
    case 0xd0: return mp_signed(r, 1, v);
    case 0xd1: return mp_signed(r, 2, v);
    case 0xd2: return mp_signed(r, 4, v);
    case 0xd3: return mp_signed(r, 8, v);
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
        size_t len = (size_t)1 << (b - 0xd4);
        if (!mp_take(r, 1, &at) || !mp_take(r, len, &v->ptr)) return false;
        v->type = ROOST_MP_EXT;
        v->len = len;
        return true;
    }
    case 0xd9: v->type = ROOST_MP_STR; return mp_bytes(r, 1, v);
    case 0xda: v->type = ROOST_MP_STR; return mp_bytes(r, 2, v);
    case 0xdb: v->type = ROOST_MP_STR; return mp_bytes(r, 4, v);
    case 0xdc: return mp_count(r, 2, ROOST_MP_ARRAY, v);
    case 0xdd: return mp_count(r, 4, ROOST_MP_ARRAY, v);
    case 0xde: return mp_count(r, 2, ROOST_MP_MAP, v);
    case 0xdf: return mp_count(r, 4, ROOST_MP_MAP, v);
    default: r->failed = true; return false; /* 0xc1 is never used */
    }
}

bool roost_mp_skip(roost_mp_reader *r) {
    uint64_t remaining = 1;
    roost_mp_value v;
    while (remaining) {
        if (!roost_mp_read(r, &v)) return false;
        remaining--;
        if (v.type == ROOST_MP_ARRAY) remaining += v.count;
        if (v.type == ROOST_MP_MAP) remaining += 2 * (uint64_t)v.count;
        if (remaining > r->len - r->pos) { /* every value takes at least one byte */
            r->failed = true;
            return false;
        }
    }
    return true;
}

bool roost_mp_read_raw(roost_mp_reader *r, roost_bytes *raw) {
    size_t start = r->pos;
    if (!roost_mp_skip(r)) return false;
    raw->ptr = r->ptr + start;
    raw->len = r->pos - start;
    return true;
}

bool roost_mp_map_get(const uint8_t *map, size_t len, const char *key, size_t key_len,
                      roost_bytes *value) {
    roost_mp_reader r;
    roost_mp_value head, k;
    roost_mp_reader_init(&r, map, len);
    if (!roost_mp_read(&r, &head) || head.type != ROOST_MP_MAP) return false;
    for (uint32_t i = 0; i < head.count; i++) {
        roost_mp_reader probe = r;
        if (!roost_mp_read(&probe, &k) || !roost_mp_skip(&r)) return false;
        if (k.type == ROOST_MP_STR && k.len == key_len && mem_equal(k.ptr, key, key_len))
            return roost_mp_read_raw(&r, value);
        if (!roost_mp_skip(&r)) return false;
    }
    return false;
}

bool roost_mp_is_str(const roost_mp_value *value, const char *s) {
    size_t n = cstr_len(s);
    return value->type == ROOST_MP_STR && value->len == n && mem_equal(value->ptr, s, n);
}
