/* Version string, per-thread error messages and small helpers shared by the modules. */
#include "mc_common.h"

#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static __thread char last_error[512];

const char *mc_version(void) { return MC_NATIVE_VERSION_STRING; }

const char *mc_last_error(void) { return last_error; }

int mc_fail(int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return rc;
}

int mc_online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#define MC_DEFAULT_SPIN_US 300
#define MC_MAX_SPIN_US 100000

/* MOONCAKE_SPIN_US, read once per process: 0 never spins (many busy processes per core) */
int mc_spin_us(void) {
    static int spin_us = -1;
    int value = __atomic_load_n(&spin_us, __ATOMIC_RELAXED);
    if (value >= 0) return value;
    const char *text = getenv("MOONCAKE_SPIN_US");
    char *end = NULL;
    long parsed = text && *text ? strtol(text, &end, 10) : MC_DEFAULT_SPIN_US;
    if (text && *text && (*end != '\0' || parsed < 0)) parsed = MC_DEFAULT_SPIN_US;
    value = parsed > MC_MAX_SPIN_US ? MC_MAX_SPIN_US : (int)parsed;
    __atomic_store_n(&spin_us, value, __ATOMIC_RELAXED);
    return value;
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int mc_spin_poll(struct pollfd *fds, size_t n) {
    int spin_us = mc_spin_us();
    if (spin_us == 0) return 0;
    int64_t until = now_us() + spin_us;
    do {
        if (poll(fds, n, 0) > 0) return 1;
        sched_yield();   /* a runnable thread of another process (a worker) goes first */
    } while (now_us() < until);
    return 0;
}

int mc_spin_ready(int fd, short events) {
    struct pollfd p = {fd, events, 0};
    return mc_spin_poll(&p, 1);
}
