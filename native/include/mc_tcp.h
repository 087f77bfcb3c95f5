/* The client side of the TCP data plane: connect, then pipelined one-sided READ/WRITE batches
 * on a persistent connection (wire format: proto/dataplane.py). */
#ifndef MC_TCP_H
#define MC_TCP_H

#include "mc_common.h"

/* CDEF-BEGIN */
#define MC_OP_READ 1
#define MC_OP_WRITE 2
#define MC_STATUS_PENDING 1

typedef struct {
    void *base;
    uint64_t length;
} mc_iov;

typedef struct {
    uint8_t op;               /* MC_OP_READ or MC_OP_WRITE */
    uint32_t segment_id;
    uint64_t offset;
    uint64_t length;          /* equals the sum of the iov lengths */
    const uint8_t *grant;
    uint16_t grant_len;
    const mc_iov *iov;        /* user memory: the source of a WRITE, the target of a READ */
    uint32_t iov_count;
    int32_t status;           /* out: 0 done, a negative Mooncake code the worker answered,
                                 MC_STATUS_PENDING when no answer came */
} mc_tcp_request;

int mc_tcp_connect(const char *host, int port, int timeout_ms);
int mc_tcp_exchange(int fd, mc_tcp_request *requests, size_t count, int timeout_ms);
int mc_tcp_close(int fd);
/* CDEF-END */

#endif
