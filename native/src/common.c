/* Version string, per-thread error messages and small helpers shared by the modules. */
#include "mc_common.h"

#include <stdarg.h>
#include <stdio.h>
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
