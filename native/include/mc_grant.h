/* Data-plane grants: checks the master's HMAC-SHA256-signed permission for one range.
 *
 * The encoding is proto/grants.py's: a fixed big-endian head (version u8, op u8, segment_id
 * u32, offset u64, length u64, expiry_ms u64, worker-id length u16), the worker id, then a
 * 32-byte MAC over everything before it. This file only verifies; the master signs.
 */
#ifndef MC_GRANT_H
#define MC_GRANT_H

#include "mc_common.h"

/* the wire's op byte, outside the CDEF block: mc_tcp.h already declares these names to cffi
 * (an identical C redefinition is legal) */
#define MC_OP_READ 1
#define MC_OP_WRITE 2

/* CDEF-BEGIN */
#define MC_GRANT_VERSION 1
#define MC_GRANT_HEAD_BYTES 32
#define MC_GRANT_MAC_BYTES 32
#define MC_GRANT_MAX_WORKER_ID 1024
#define MC_GRANT_MAX_BYTES (MC_GRANT_HEAD_BYTES + MC_GRANT_MAX_WORKER_ID + MC_GRANT_MAC_BYTES)

typedef struct {
    int op;
    uint32_t segment_id;
    uint64_t offset;
    uint64_t length;
    uint64_t expiry_ms;  /* wall-clock milliseconds since the epoch */
} mc_grant;

/* 0 and *out when `token` is authentic (MAC compared in constant time), well formed, for
 * `worker_id` and not expired at now_ms; otherwise -EACCES with the reason in mc_last_error() */
int mc_grant_verify(const uint8_t *key, size_t key_len, const uint8_t *token, size_t token_len,
                    const char *worker_id, size_t worker_id_len, uint64_t now_ms, mc_grant *out);
/* 1 when the grant allows `op` on [offset, offset + length) of segment_id, else 0;
 * exact for any 64-bit values (no overflow) */
int mc_grant_covers(const mc_grant *grant, int op, uint32_t segment_id, uint64_t offset,
                    uint64_t length);
/* CDEF-END */

#endif
