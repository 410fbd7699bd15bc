/* An abusive native agent (loadtests/neighbours.py): its start function never returns.
 *
 * A core module that exports `_initialize` (what a C constructor compiles to in the
 * reactor model) has it called by the component as it is instantiated, before any
 * export: so every activation of this kind spins until the host stops it. Its handler
 * would echo, were it ever reached. */
#include "roost.h"

static volatile uint64_t spins;

__attribute__((export_name("_initialize"))) void _initialize(void) {
    for (;;) spins++;
}

int roost_on_message(roost_ctx *ctx, const uint8_t *msg, size_t len) {
    roost_mp reply;
    roost_mp_init(&reply);
    roost_mp_raw(&reply, msg, len);
    return roost_reply_mp(ctx, &reply);
}
