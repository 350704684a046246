/*
 * A small agent that embeds jumpset through its C ABI instead of running iptables:
 * check -> reconcile -> check, then print the status and detect JSON objects.
 * SPDX-License-Identifier: Apache-2.0 OR MIT
 *
 * Install the library (ffi/install.sh builds and installs it with its pkg-config file),
 * then build the agent, shared or static (from the repository root):
 *
 *   sudo ffi/install.sh /usr/local
 *   cc -Wall ffi/examples/c/agent.c $(pkg-config --cflags --libs jumpset) -o agent
 *   cc -Wall ffi/examples/c/agent.c $(pkg-config --cflags jumpset) \
 *      /usr/local/lib/libjumpset.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -o agent-static
 *
 * Run it as root (CAP_NET_ADMIN) in the network namespace whose chains it should fix:
 *
 *   ./agent /etc/jumpset/jumpset.toml
 *
 * It prints one `key=value` line per step (check=, reconcile=, report=, check=, status=,
 * detect=) and exits 0 when the chains end converged and both JSON calls succeeded,
 * 1 otherwise (2 for bad usage or a bad config).
 */
#include "jumpset.h"

#include <stdio.h>
#include <stdlib.h>

/* The whole file as a NUL-terminated string, or NULL. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

/* This thread's last error, or a placeholder (jumpset_last_error() may be NULL). */
static const char *why(void)
{
    const char *e = jumpset_last_error();
    return e ? e : "(no message)";
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CONFIG.toml\n", argv[0]);
        return 2;
    }
    char *toml = read_file(argv[1]);
    if (!toml) {
        perror(argv[1]);
        return 2;
    }
    printf("version=%s\n", jumpset_version());

    char *err = NULL;
    jumpset_t *js = jumpset_new(toml, &err);
    free(toml);
    if (!js) {
        fprintf(stderr, "agent: %s\n", err);
        jumpset_string_free(err);
        return 2;
    }

    int before = jumpset_check(js);
    printf("check=%d\n", before);
    if (before != JUMPSET_EXIT_OK)
        fprintf(stderr, "agent: check: %s\n", why());

    char *report = NULL;
    int rc = jumpset_reconcile(js, &report); /* report is always set */
    printf("reconcile=%d\nreport=%s\n", rc, report);
    if (rc != JUMPSET_EXIT_OK)
        fprintf(stderr, "agent: reconcile: %s\n", why());
    jumpset_string_free(report);

    int after = jumpset_check(js);
    printf("check=%d\n", after);
    if (after != JUMPSET_EXIT_OK)
        fprintf(stderr, "agent: check: %s\n", why());

    int ok = after == JUMPSET_EXIT_OK;
    char *status = jumpset_status_json(js);
    if (status) {
        printf("status=%s\n", status);
        jumpset_string_free(status);
    } else {
        fprintf(stderr, "agent: status: %s\n", why());
        ok = 0;
    }
    char *detect = jumpset_detect_json();
    if (detect) {
        printf("detect=%s\n", detect);
        jumpset_string_free(detect);
    } else {
        fprintf(stderr, "agent: detect: %s\n", why());
        ok = 0;
    }

    jumpset_free(js);
    return ok ? 0 : 1;
}
