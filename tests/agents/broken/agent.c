/* A deliberately broken native guest: it implements the roost:agent exports by hand (no
 * SDK) and, depending on the message, returns values that break the canonical ABI.
 * The message is a msgpack fixstr naming the fault; anything else gets a valid reply. */
#include <stddef.h>
#include <stdint.h>

__attribute__((import_module("roost:agent/log@0.1.0"), import_name("write")))
extern void log_write(int32_t level, const char *message, size_t len);

static _Alignas(8) uint8_t heap[65536];
static size_t heap_used;
static _Alignas(8) uint8_t ret[32];
static _Alignas(8) uint8_t replies[16];
static _Alignas(8) uint64_t done[1];
static const uint8_t reply_ok[3] = {0xa2, 'o', 'k'};
static const char bad_utf8[4] = {'a', (char)0xff, (char)0xfe, 'b'};

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t size) {
    (void)old;
    (void)old_size;
    heap_used = (heap_used + align - 1) & ~(align - 1);
    if (heap_used + size > sizeof heap) heap_used = 0;
    void *p = heap + heap_used;
    heap_used += size;
    return p;
}

static void put32(size_t at, uint32_t v) {
    __builtin_memcpy(ret + at, &v, 4);
}

static int is(const uint8_t *payload, size_t len, const char *name) {
    size_t n = 0;
    while (name[n]) n++;
    if (len != n + 1 || payload[0] != (0xa0 | n)) return 0;
    for (size_t i = 0; i < n; i++)
        if (payload[1 + i] != (uint8_t)name[i]) return 0;
    return 1;
}

__attribute__((export_name("init")))
void *init(uint8_t *config, size_t config_len, int32_t has_state, uint8_t *state, size_t len) {
    (void)config, (void)config_len, (void)has_state, (void)state, (void)len;
    ret[0] = 0;
    return ret;
}

static void *output(uint64_t event, uint32_t reply_ptr, uint32_t reply_len, uint32_t n_replies) {
    __builtin_memcpy(replies, &event, 8);
    __builtin_memcpy(replies + 8, &reply_ptr, 4);
    __builtin_memcpy(replies + 12, &reply_len, 4);
    done[0] = event;
    ret[0] = 0;
    put32(4, (uint32_t)(uintptr_t)replies);
    put32(8, n_replies);
    put32(12, (uint32_t)(uintptr_t)done);
    put32(16, 1);
    ret[20] = 0;
    return ret;
}

__attribute__((export_name("on-event")))
void *on_event(uint64_t id, const uint8_t *kind, size_t kind_len, const uint8_t *payload,
               size_t len) {
    (void)kind, (void)kind_len;
    heap_used = 0;
    if (is(payload, len, "oob-list")) { /* the replies list starts past the end of memory */
        output(id, (uint32_t)(uintptr_t)reply_ok, 3, 1);
        put32(4, 0xfffffff0u);
        return ret;
    }
    if (is(payload, len, "oob-payload")) /* a reply's bytes lie past the end of memory */
        return output(id, 0x7ffffff0u, 64, 1);
    if (is(payload, len, "huge-len")) /* 2^28 replies of 16 bytes: far more than memory */
        return output(id, (uint32_t)(uintptr_t)reply_ok, 3, 0x10000000u);
    if (is(payload, len, "bad-utf8")) { /* an err string that is not UTF-8 */
        ret[0] = 1;
        put32(4, (uint32_t)(uintptr_t)bad_utf8);
        put32(8, sizeof bad_utf8);
        return ret;
    }
    if (is(payload, len, "huge-string")) { /* an err string of 4 GiB - 1 */
        ret[0] = 1;
        put32(4, 16);
        put32(8, 0xffffffffu);
        return ret;
    }
    if (is(payload, len, "bad-tag")) { /* result<_, _> has no case 7 */
        output(id, (uint32_t)(uintptr_t)reply_ok, 3, 1);
        ret[0] = 7;
        return ret;
    }
    if (is(payload, len, "bad-option")) { /* option<_> has no case 2 */
        output(id, (uint32_t)(uintptr_t)reply_ok, 3, 1);
        ret[20] = 2;
        return ret;
    }
    if (is(payload, len, "bad-utf8-import")) { /* an import argument that is not UTF-8 */
        log_write(1, bad_utf8, sizeof bad_utf8);
        return output(id, (uint32_t)(uintptr_t)reply_ok, 3, 1);
    }
    if (is(payload, len, "oob-import")) { /* an import argument past the end of memory */
        log_write(1, (const char *)0xfffffff0u, 64);
        return output(id, (uint32_t)(uintptr_t)reply_ok, 3, 1);
    }
    return output(id, (uint32_t)(uintptr_t)reply_ok, 3, 1);
}

__attribute__((export_name("on-complete")))
void *on_complete(uint64_t op, int32_t tag, const uint8_t *ptr, size_t len) {
    (void)op, (void)tag, (void)ptr, (void)len;
    ret[0] = 1;
    put32(4, (uint32_t)(uintptr_t)"no ops");
    put32(8, 6);
    return ret;
}

__attribute__((export_name("cabi_post_init"))) void post_init(void *p) { (void)p; }
__attribute__((export_name("cabi_post_on-event"))) void post_on_event(void *p) { (void)p; }
__attribute__((export_name("cabi_post_on-complete"))) void post_on_complete(void *p) { (void)p; }
