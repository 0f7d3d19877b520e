/* echo: the compat HTTP mode (the reference's). GET /m/echo/hello answers
 *
 *     echo: GET /m/echo/hello
 *
 * as text/plain. The request is the text "METHOD\nPATH\n"; the answer is a NUL-terminated
 * string in this module's memory (at most 64 KiB). See docs/http.md. */
#include <string.h>

#include "tinywasm.h"

TW_EXPORT_ALLOCATOR(); /* the host places the request with malloc and frees it after */

static char reply[1024];

TW_EXPORT(handle) const char *handle(const char *req, int len) {
    static const char prefix[] = "echo: ";
    int n = sizeof prefix - 1, i;
    memcpy(reply, prefix, (size_t)n);
    for (i = 0; i < len && n < (int)sizeof reply - 2; i++)
        reply[n++] = req[i] == '\n' ? ' ' : req[i]; /* "GET\n/m/echo\n" -> "GET /m/echo " */
    if (n > (int)sizeof prefix - 1 && reply[n - 1] == ' ') n--;
    reply[n++] = '\n';
    reply[n] = '\0';
    return reply;
}
