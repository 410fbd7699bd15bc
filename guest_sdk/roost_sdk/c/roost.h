/* roost.h: write Roost agents in C against the roost:agent@0.1.0 world.
 *
 * An agent is a C file that includes this header and defines its handlers:
 *
 *     #include "roost.h"
 *
 *     int roost_on_message(roost_ctx *ctx, const uint8_t *msg, size_t len) {
 *         int64_t count = roost_state_int(ctx, "count", 0) + 1;
 *         roost_state_set_int(ctx, "count", count);
 *         roost_mp w;
 *         roost_mp_init(&w);
 *         roost_mp_map(&w, 2);
 *         roost_mp_cstr(&w, "echo");
 *         roost_mp_raw(&w, msg, len);
 *         roost_mp_cstr(&w, "count");
 *         roost_mp_int(&w, count);
 *         return roost_reply_mp(ctx, &w);
 *     }
 *
 * `roost build agent.c` compiles it with roost.c (the canonical ABI glue) into a component.
 *
 * Semantics, the same as the Python SDK's:
 * - Every payload is msgpack. Messages arrive as the raw msgpack bytes of the message.
 * - The durable state is a msgpack map. `roost_state*` read it, `roost_set_state*` change
 *   it; at the end of a turn that changed it, the new map is handed back to the host and
 *   committed with the turn's kv writes. A handler that fails commits nothing.
 * - Replies go to the sender of the event being handled.
 * - Async ops (`roost_sleep`) return at once; the turn ends when the handler returns, and
 *   the op's callback runs in a later turn. An event is finished when its handler and
 *   every callback it started (transitively) have returned.
 *
 * Memory: pointers the SDK hands to a handler (the message, kv values, msgpack writer
 * buffers, error texts) live in a per-turn arena and are valid until the handler returns.
 * Keep longer-lived data in the state map, in kv, in globals, or in `roost_alloc` memory.
 *
 * Handlers return ROOST_OK, or fail the turn with `return roost_fail(ctx, "why");`.
 * Capabilities: calling kv, clock, random, log or timers functions makes the component
 * import that capability, so the agent's manifest must grant it.
 */
#ifndef ROOST_H
#define ROOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ROOST_OK 0
#define ROOST_ERR (-1)

/* The current turn. Only valid inside a handler or callback. */
typedef struct roost_ctx roost_ctx;

typedef struct {
    const uint8_t *ptr;
    size_t len;
} roost_bytes;

typedef struct {
    const char *ptr;
    size_t len;
} roost_str;

typedef enum {
    ROOST_DEBUG = 0,
    ROOST_INFO = 1,
    ROOST_WARN = 2,
    ROOST_ERROR = 3,
} roost_level;

/* ---- handlers the agent defines --------------------------------------------------------
 * roost_on_message is required; the others have defaults. */

/* A message from the user: `msg` is msgpack. */
int roost_on_message(roost_ctx *ctx, const uint8_t *msg, size_t len);
/* Called once per instantiation, after the state was restored. Default: nothing.
 * Replies and async ops are not allowed here. */
int roost_on_start(roost_ctx *ctx);
/* A timer fired: `payload` is msgpack. Default: fails the turn. */
int roost_on_timer(roost_ctx *ctx, const uint8_t *payload, size_t len);
/* A message from another agent `sender` ("kind/id"). Default: fails the turn. */
int roost_on_agent_message(roost_ctx *ctx, roost_str sender, const uint8_t *msg, size_t len);
/* The result of an op started in the continuation form (a request with "then"), as the
 * host delivers it: a msgpack map. Default: fails the turn. */
int roost_on_continuation(roost_ctx *ctx, const uint8_t *payload, size_t len);

/* ---- the turn --------------------------------------------------------------------------- */

/* Fail the turn with `message`; returns ROOST_ERR so handlers can `return roost_fail(...)`. */
int roost_fail(roost_ctx *ctx, const char *message);
int roost_fail_n(roost_ctx *ctx, const char *message, size_t len);
/* The text of the last failed host call (kv set, sleep, ...), or "". */
roost_str roost_last_error(roost_ctx *ctx);

/* The kind's name and the agent's id. */
roost_str roost_kind(roost_ctx *ctx);
roost_str roost_agent_id(roost_ctx *ctx);
/* The kind's [config] table (msgpack map). */
roost_bytes roost_config(roost_ctx *ctx);

/* Reply to the sender of the current event with a msgpack payload (copied). */
int roost_reply(roost_ctx *ctx, const uint8_t *payload, size_t len);

/* ---- durable state ----------------------------------------------------------------------- */

/* The state map as msgpack (an empty map for a new agent). */
roost_bytes roost_state(roost_ctx *ctx);
/* Replace the whole state with `map` (msgpack map, copied). */
int roost_set_state(roost_ctx *ctx, const uint8_t *map, size_t len);
/* Set one key of the state map to a msgpack value (copied); adds the key if missing. */
int roost_state_set(roost_ctx *ctx, const char *key, const uint8_t *value, size_t len);
/* The msgpack value of one key, or false when the key is missing. */
bool roost_state_get(roost_ctx *ctx, const char *key, roost_bytes *value);
/* Integer helpers: `fallback` when missing or not an integer. */
int64_t roost_state_int(roost_ctx *ctx, const char *key, int64_t fallback);
int roost_state_set_int(roost_ctx *ctx, const char *key, int64_t value);
/* Remove one key; false if it was not there. */
bool roost_state_remove(roost_ctx *ctx, const char *key);

/* ---- capabilities -------------------------------------------------------------------------- */

/* kv: keys are UTF-8 strings of 1-512 bytes (other bytes are refused here: get finds
 * nothing, set fails with roost_last_error); writes commit with the turn. */
bool roost_kv_get(roost_ctx *ctx, const char *key, size_t key_len, roost_bytes *value);
/* ROOST_ERR when over quota or the key is invalid: see roost_last_error. */
int roost_kv_set(roost_ctx *ctx, const char *key, size_t key_len, const uint8_t *value,
                 size_t len);
void roost_kv_delete(roost_ctx *ctx, const char *key, size_t key_len);
/* Keys starting with `prefix`, sorted, at most `limit`; `*keys` lives in the turn arena. */
size_t roost_kv_keys(roost_ctx *ctx, const char *prefix, size_t prefix_len, uint32_t limit,
                     roost_str **keys);

/* clock: seconds since the unix epoch, as of the start of the turn. */
double roost_now(roost_ctx *ctx);
/* random: fill `buf` from the host's CSPRNG. */
void roost_random(roost_ctx *ctx, uint8_t *buf, size_t len);
/* log */
void roost_log(roost_ctx *ctx, roost_level level, const char *message, size_t len);
void roost_log_cstr(roost_ctx *ctx, roost_level level, const char *message);

/* ---- async ops ----------------------------------------------------------------------------- */

typedef struct {
    bool ok;
    /* ok: the op's msgpack result (nil for a sleep) */
    roost_bytes value;
    /* !ok: why the op failed. A provider's failure (llm, mcp) is a JSON object
     * {"message", "type", "provider", "status", "code", "retryable", ...}. */
    roost_str error;
} roost_op_result;

/* Runs in a later turn, when the op completed; may reply, start ops and fail like a handler. */
typedef int (*roost_op_callback)(roost_ctx *ctx, const roost_op_result *result, void *user);

/* timers: call `done(ctx, result, user)` after `seconds`. Returns the op id, or 0 when the
 * host refused (see roost_last_error). `user` must outlive the turn (a global, or
 * roost_alloc memory the callback frees). */
uint64_t roost_sleep(roost_ctx *ctx, double seconds, roost_op_callback done, void *user);

/* The ops below take a msgpack map request, as documented in the WIT (docs/capabilities.md),
 * and complete like roost_sleep: `done` gets the msgpack result in a later turn. A request
 * with "then" (and "tag") is the continuation form instead: `done` may be NULL, the event
 * finishes without waiting, and the result arrives as a new event through
 * roost_on_continuation, even after the agent hibernated. Each returns the op id, or 0 when
 * the host refused (see roost_last_error). */

/* llm: {messages, model?, max_tokens?, temperature?, tools?, tool_choice?, stream?} ->
 * {content, tool_calls: [{id, name, arguments, arguments_json}], finish_reason, message,
 * model, provider, usage: {input_tokens, output_tokens, estimated}}. `tools` are OpenAI
 * function tools; answer a tool call by appending `message` and a {role: "tool",
 * tool_call_id, content} message to the conversation and calling again (docs/native.md). */
uint64_t roost_llm_chat(roost_ctx *ctx, const uint8_t *request, size_t len,
                        roost_op_callback done, void *user);
/* llm: {input: text or [texts], model?} -> {embeddings: [[float]], model, provider, usage} */
uint64_t roost_llm_embed(roost_ctx *ctx, const uint8_t *request, size_t len,
                         roost_op_callback done, void *user);
/* mcp: {server} -> {tools: [{name, description, input_schema}]} */
uint64_t roost_mcp_list_tools(roost_ctx *ctx, const uint8_t *request, size_t len,
                              roost_op_callback done, void *user);
/* mcp: {server, name, arguments?} -> {content, text, structured, is_error} */
uint64_t roost_mcp_call_tool(roost_ctx *ctx, const uint8_t *request, size_t len,
                             roost_op_callback done, void *user);
/* mcp: {server} -> {resources: [{uri, name, description, mime_type}]} */
uint64_t roost_mcp_list_resources(roost_ctx *ctx, const uint8_t *request, size_t len,
                                  roost_op_callback done, void *user);
/* mcp: {server, uri} -> {contents: [{uri, mime_type, text or blob}]} */
uint64_t roost_mcp_read_resource(roost_ctx *ctx, const uint8_t *request, size_t len,
                                 roost_op_callback done, void *user);
/* approval: {action, details?, timeout_s?} -> {id, approved, decision, by, note,
 * decided_at}, once a person decided (or it expired). */
uint64_t roost_approval_request(roost_ctx *ctx, const uint8_t *request, size_t len,
                                roost_op_callback done, void *user);
/* http: {url, method?, headers?, body?} -> {status, headers, body} */
uint64_t roost_http_fetch(roost_ctx *ctx, const uint8_t *request, size_t len,
                          roost_op_callback done, void *user);
/* agents: {kind, id, message, timeout_s} -> the other agent's replies (a list) */
uint64_t roost_agents_ask(roost_ctx *ctx, const uint8_t *request, size_t len,
                          roost_op_callback done, void *user);
/* agents: send `message` (msgpack) to kind/id when this turn commits. */
int roost_agents_send(roost_ctx *ctx, const char *kind, size_t kind_len, const char *id,
                      size_t id_len, const uint8_t *message, size_t len);

/* ---- memory -------------------------------------------------------------------------------- */

/* Memory that lives until freed (NULL when the instance's memory limit is reached). */
void *roost_alloc(size_t size);
void *roost_realloc(void *ptr, size_t size);
void roost_free(void *ptr);
/* Memory that lives until the current handler returns. */
void *roost_turn_alloc(size_t size);

/* ---- msgpack -------------------------------------------------------------------------------- */

/* A writer into a growable turn-arena buffer. Errors (out of memory) are sticky: check
 * `w.failed`, or let roost_reply_mp / roost_set_state_mp report them. */
typedef struct {
    uint8_t *buf;
    size_t len;
    size_t cap;
    bool failed;
} roost_mp;

void roost_mp_init(roost_mp *w);
void roost_mp_nil(roost_mp *w);
void roost_mp_bool(roost_mp *w, bool value);
void roost_mp_int(roost_mp *w, int64_t value);
void roost_mp_uint(roost_mp *w, uint64_t value);
void roost_mp_double(roost_mp *w, double value);
void roost_mp_str(roost_mp *w, const char *s, size_t len);
void roost_mp_cstr(roost_mp *w, const char *s);
void roost_mp_bin(roost_mp *w, const uint8_t *data, size_t len);
/* Headers: follow with `count` values (arrays) or `count` key/value pairs (maps). */
void roost_mp_array(roost_mp *w, uint32_t count);
void roost_mp_map(roost_mp *w, uint32_t count);
/* Append an already-encoded msgpack value. */
void roost_mp_raw(roost_mp *w, const uint8_t *data, size_t len);
/* Reply with / store the writer's bytes. */
int roost_reply_mp(roost_ctx *ctx, const roost_mp *w);
int roost_set_state_mp(roost_ctx *ctx, const roost_mp *w);

typedef enum {
    ROOST_MP_NIL,
    ROOST_MP_BOOL,
    ROOST_MP_INT, /* fits int64_t: .i */
    ROOST_MP_UINT, /* above INT64_MAX: .u */
    ROOST_MP_FLOAT,
    ROOST_MP_STR,
    ROOST_MP_BIN,
    ROOST_MP_ARRAY, /* .count elements follow */
    ROOST_MP_MAP, /* .count key/value pairs follow */
    ROOST_MP_EXT,
} roost_mp_type;

typedef struct {
    roost_mp_type type;
    bool b;
    int64_t i;
    uint64_t u;
    double f;
    /* STR, BIN, EXT: the bytes (not NUL-terminated) */
    const uint8_t *ptr;
    size_t len;
    /* ARRAY, MAP */
    uint32_t count;
} roost_mp_value;

typedef struct {
    const uint8_t *ptr;
    size_t len;
    size_t pos;
    bool failed;
} roost_mp_reader;

void roost_mp_reader_init(roost_mp_reader *r, const uint8_t *data, size_t len);
/* Read the next value's head (arrays and maps: just the header). False at the end or on
 * malformed input (then r->failed is set). */
bool roost_mp_read(roost_mp_reader *r, roost_mp_value *value);
/* Skip one whole value, nested values included. */
bool roost_mp_skip(roost_mp_reader *r);
/* Read one whole value as its raw msgpack bytes. */
bool roost_mp_read_raw(roost_mp_reader *r, roost_bytes *raw);
/* In the msgpack map `map`, find the value of string key `key`, as raw msgpack bytes. */
bool roost_mp_map_get(const uint8_t *map, size_t len, const char *key, size_t key_len,
                      roost_bytes *value);
/* Whether `value` is the msgpack string `s`. */
bool roost_mp_is_str(const roost_mp_value *value, const char *s);

#ifdef __cplusplus
}
#endif

#endif /* ROOST_H */
