/* tag: a pass-through middleware in the full HTTP mode. Built as `10-tag@[*].wasm`, it runs
 * in front of every route and passes each request on with the header `x-tag: tag` added
 * (a route in full mode sees it; compat routes see no headers). It answers nothing itself:
 * it returns the map {next: true, headers: {x-tag: tag}}. See docs/http.md. */
#include "tinywasm.h"
#include "tinywasm_http.h"

TW_EXPORT_ALLOCATOR();

static unsigned char out[64];

TW_EXPORT(handle_http) uint64_t handle_http(const void *req, int len) {
    tc_writer w;
    tc_writer_init(&w, out, sizeof out);
    tc_map(&w, 2);
    tc_text_str(&w, "next");
    tc_bool(&w, 1);
    tc_text_str(&w, "headers");
    tc_map(&w, 1);
    tc_text_str(&w, "x-tag");
    tc_text_str(&w, "tag");
    return tw_http_result(&w);
}
