/* mooncake_native: version, feature flags and the error convention shared by every module.
 *
 * Every function that can fail returns 0 (or a count) on success and a negative value on
 * failure: -errno for system errors, MC_ERR_PROTOCOL when a peer broke the wire format.
 * mc_last_error() gives this thread's message for the last failure. The text between CDEF-BEGIN and CDEF-END in each header is what cffi declares
 * (build_native.py turns each `#define NAME value` there into cffi's `#define NAME ...`).
 */
#ifndef MC_COMMON_H
#define MC_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define MC_NATIVE_VERSION_STRING "3.7.0"

#ifdef MC_BUILD_RDMA
#define MC_RDMA_BUILT 1
#else
#define MC_RDMA_BUILT 0
#endif

/* CDEF-BEGIN */
#define MC_HAS_RDMA MC_RDMA_BUILT
/* a reply or request that breaks the wire format */
#define MC_ERR_PROTOCOL (-10000)

const char *mc_version(void);
const char *mc_last_error(void);
int mc_online_cpus(void);
/* microseconds a thread waiting for a peer's bytes polls before it sleeps in poll() */
int mc_spin_us(void);
/* Polls fd for `events` without sleeping for up to mc_spin_us(): on a VM, waking a thread
 * that slept in poll() costs 20-30 us per hop, more than a small request takes to answer.
 * Returns 1 when fd is ready (or has an error or hang-up), 0 when the spin ran out. */
int mc_spin_ready(int fd, short events);
/* CDEF-END */

/* a big-endian unsigned integer of `bytes` (<= 8) bytes, as the wire and grants encode them */
static inline uint64_t mc_load_be(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | p[i];
    return v;
}

/* writes v as a big-endian unsigned integer of `bytes` (<= 8) bytes: mc_load_be's inverse */
static inline void mc_store_be(uint8_t *p, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

struct pollfd;
/* mc_spin_ready over several descriptors: 1 when any has one of its events */
int mc_spin_poll(struct pollfd *fds, size_t n);

/* records this thread's error message and returns rc (for `return mc_fail(-EINVAL, ...)`) */
int mc_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
