/*
 * tinywasm.h - guest interface for tinywasm-wasi modules (guest interface, version 2).
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
 *   save_state() -> i64          on the old version during a hot swap: tw_state_save(...).
 *   restore_state(ptr, len) -> int
 *                                on the new version, with those bytes: tw_state_open(...);
 *                                return TW_STATE_TAKEN, or TW_STATE_REJECTED for state it
 *                                cannot read (the host logs that the state was dropped).
 *
 * wasi-libc has malloc/free but does not export them: put TW_EXPORT_ALLOCATOR(); once in
 * one source file of the module.
 *
 * Full contract: docs/abi.md.
 */
#ifndef TINYWASM_H
#define TINYWASM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TW_ABI_VERSION 2

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

/* Read the value of `key` from the module's config (<name>.toml beside it): copies at
 * most `buf_len` bytes into `buf` and returns the value's full length, or -1 when the
 * key is not set. A return above `buf_len` means the value was cut: ask again with a
 * larger buffer. Values from ${ENV} references are secrets: the API never shows them. */
TW_IMPORT(config_get)
int config_get(const char *key, int key_len, char *buf, int buf_len);

/* Version 2. Who published the message being delivered, valid only inside
 * on_topic_message/on_message: copies at most `buf_len` bytes into `buf` and returns the
 * sender's full length, or -1 when there is none (outside a delivery, or a message the
 * server itself published). The host sets it; a publisher cannot choose or forge it:
 *
 *     "user:<sub>"      a browser connected with a token (its verified `sub`)
 *     "conn:c<N>"       a browser without token auth (its connection id on this server)
 *     "module:<name>"   another module's publish
 *
 * A module that imports it needs a version-2 server; an older one refuses to load it,
 * naming the import. Modules that do not import it run unchanged. */
TW_IMPORT(message_sender)
int tw_message_sender(char *buf, int buf_len);

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

/* Write `n` in decimal to `out` (room for 20 digits; no NUL) and return the digit count:
 * numbers as text without pulling in printf (which adds about 20 KB to a module). */
static inline int tw_u64_text(uint64_t n, char out[20]) {
    char digits[20];
    int len = 0, i;
    do digits[len++] = (char)('0' + n % 10), n /= 10;
    while (n);
    for (i = 0; i < len; i++) out[i] = digits[len - 1 - i];
    return len;
}

/* -- results that are a pointer and a length ---------------------------------------------- */

/* Pack a block into one i64, pointer in the high 32 bits, length in the low 32: what
 * save_state and handle_http return. */
static inline uint64_t tw_pack(const void *ptr, size_t len) {
    return (uint64_t)(uintptr_t)ptr << 32 | (uint64_t)(uint32_t)len;
}

/* -- state handoff across a hot swap (docs/abi.md, "Hot swap") ------------------------------ */

/* Define these to hand state to the next version of the module:
 *
 *     TW_EXPORT(save_state) uint64_t save_state(void) {
 *         return tw_state_save(1, &count, sizeof count);          // version tag 1
 *     }
 *     TW_EXPORT(restore_state) int restore_state(const void *ptr, int len) {
 *         const void *data; size_t n;
 *         if (!tw_state_open(ptr, len, 1, &data, &n) || n != sizeof count)
 *             return TW_STATE_REJECTED;                          // logged by the host
 *         memcpy(&count, data, n);
 *         return TW_STATE_TAKEN;
 *     }
 *
 * The bytes are the SDK state envelope, the same in every language's SDK: the version tag as
 * 4 bytes little-endian, then the data. So a module may be rewritten in another language and
 * still take its state over. */
uint64_t save_state(void) __attribute__((export_name("save_state")));
int restore_state(const void *ptr, int len) __attribute__((export_name("restore_state")));

/* restore_state's result. A rejection is logged by the host as a warning, with the byte
 * count and the version tag, and kept in the swap's history record. */
#define TW_STATE_TAKEN 0
#define TW_STATE_REJECTED 1

#define TW_STATE_HEADER 4

/* save_state's result: `len` bytes of `data` after the tag `version`, in a block from malloc
 * (the host reads it once; the old version is then dropped). 0 if malloc failed. */
static inline uint64_t tw_state_save(uint32_t version, const void *data, size_t len) {
    unsigned char *block = (unsigned char *)malloc(TW_STATE_HEADER + len);
    if (!block) return 0;
    block[0] = (unsigned char)version;
    block[1] = (unsigned char)(version >> 8);
    block[2] = (unsigned char)(version >> 16);
    block[3] = (unsigned char)(version >> 24);
    if (len) memcpy(block + TW_STATE_HEADER, data, len);
    return tw_pack(block, TW_STATE_HEADER + len);
}

/* The version tag of restore_state's bytes, or -1 if they are too short to have one. */
static inline int64_t tw_state_version(const void *ptr, int len) {
    const unsigned char *b = (const unsigned char *)ptr;
    if (len < TW_STATE_HEADER) return -1;
    return (int64_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24);
}

/* In restore_state: 1 with `*data` and `*data_len` set if the bytes carry the tag `version`, else 0
 * (another version's state: log it and start afresh, or convert it). The data is valid only
 * during the call: copy what you keep. */
static inline int tw_state_open(const void *ptr, int len, uint32_t version, const void **data,
                                size_t *data_len) {
    if (tw_state_version(ptr, len) != (int64_t)version) return 0;
    *data = (const unsigned char *)ptr + TW_STATE_HEADER;
    *data_len = (size_t)len - TW_STATE_HEADER;
    return 1;
}

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
