/*
 * tinywasm.h - guest interface for tinywasm-wasi modules (guest interface, version 1).
 *
 * Build a module (from the repository root):
 *
 *     python -m cmd.tinywasm build modules/<name>
 *
 * which runs
 *
 *     python -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -O2 -s \
 *         -Wl,-z,stack-size=65536 -I modules/include -o modules/dist/<name>.wasm *.c
 *
 * Host imports (module "env", every parameter i32, no results) are declared below.
 * Pointers and lengths must lie inside this module's memory; a bad one traps the call.
 *
 * Exports the host looks for, by name (all optional except `memory`):
 *
 *   memory                       exported automatically by the linker.
 *   _initialize                  exported automatically with -mexec-model=reactor; the host
 *                                calls it (or `_start` for a command module) exactly once,
 *                                before init().
 *   init()                       called once after _initialize; subscribe and publish here.
 *   on_topic_message(topic_ptr, topic_len, ptr, len)
 *                                receives a message with its topic; preferred over
 *                                on_message when both are exported.
 *   on_message(ptr, len)         receives a message payload (without its topic).
 *   drain() -> int               asked before the module is unloaded: milliseconds to wait
 *                                before asking again, 0 = idle.
 *   malloc(size) -> ptr          the host allocates the delivery buffer with it (fallback
 *                                export name: `alloc`). Without either, a module cannot
 *                                receive messages.
 *   free(ptr)                    called with a pointer malloc gave once the host is done with
 *                                that block (it keeps one block for data up to 64 KiB).
 *
 * wasi-libc has malloc/free but does not export them: put TW_EXPORT_ALLOCATOR(); once in
 * one source file of the module.
 *
 * Full contract: docs/abi.md.
 */
#ifndef TINYWASM_H
#define TINYWASM_H

#include <stddef.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TW_ABI_VERSION 1

#define TW_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

/* Export a function to the host under `name`, e.g. TW_EXPORT(init) void init(void) {...} */
#define TW_EXPORT(name) __attribute__((export_name(#name)))

/* Publish `payload` on the bus topic `topic` (concrete, no wildcards). */
TW_IMPORT(publish)
void publish(const char *topic, int topic_len, const void *payload, int payload_len);

/* Subscribe to `topic`, which may use `*` (one token) and `>` (rest of topic, last token).
 * handler_idx is reserved: pass 0. Subscribing twice to the same pattern is a no-op. */
TW_IMPORT(subscribe)
void subscribe(const char *topic, int topic_len, int handler_idx);

/* Remove the subscription to exactly this pattern. */
TW_IMPORT(unsubscribe)
void unsubscribe(const char *topic, int topic_len);

/* Send `payload` as one binary frame to every WebSocket client on `topic`. */
TW_IMPORT(ws_broadcast)
void ws_broadcast(const char *topic, int topic_len, const void *payload, int payload_len);

/* Write one line to the server log, tagged with the module name. Import name: "log". */
TW_IMPORT(log)
void tw_log(const char *msg, int msg_len);

/* Convenience wrappers taking NUL-terminated strings. */
static inline int tw_strlen_(const char *s) { return (int)__builtin_strlen(s); }

static inline void tw_publish_str(const char *topic, const char *payload) {
    publish(topic, tw_strlen_(topic), payload, tw_strlen_(payload));
}

static inline void tw_subscribe_str(const char *topic) {
    subscribe(topic, tw_strlen_(topic), 0);
}

static inline void tw_unsubscribe_str(const char *topic) {
    unsubscribe(topic, tw_strlen_(topic));
}

static inline void tw_broadcast_str(const char *topic, const char *payload) {
    ws_broadcast(topic, tw_strlen_(topic), payload, tw_strlen_(payload));
}

static inline void tw_log_str(const char *msg) { tw_log(msg, tw_strlen_(msg)); }

#ifdef __cplusplus
}
#endif

/* Export libc's allocator as `malloc` and `free`. The wrappers have their own symbol names
 * (tw_malloc, tw_free), so they do not clash with libc's malloc/free symbols. */
#define TW_EXPORT_ALLOCATOR()                                                      \
    TW_EXPORT(malloc) void *tw_malloc(size_t size) { return malloc(size); }        \
    TW_EXPORT(free) void tw_free(void *ptr) { free(ptr); }                         \
    typedef int tw_export_allocator_needs_a_semicolon_

#endif /* TINYWASM_H */
