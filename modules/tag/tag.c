/* tag: a pass-through middleware in the full HTTP mode. Built as `10-tag@[*].wasm`, it runs
 * in front of every route and passes each request on with the header `x-tag: tag` added
 * (a route in full mode sees it; compat routes see no headers). It answers nothing itself:
 * it returns the map {next: true, headers: {x-tag: tag}}. See docs/http.md. */
#include "tinywasm.h"
#include "tinywasm_http.h"

TW_EXPORT_ALLOCATOR();

TW_EXPORT(handle_http) uint64_t handle_http(const void *req, int len) {
    return tw_http_next(TW_HEADERS({"x-tag", "tag"}));
}
