/* The client side of the TCP data plane: connect, then pipelined one-sided READ/WRITE batches
 * on a persistent connection (wire format: proto/dataplane.py). */
#ifndef MC_TCP_H
#define MC_TCP_H

#include "mc_common.h"

/* CDEF-BEGIN */
#define MC_OP_READ 1
#define MC_OP_WRITE 2
#define MC_STATUS_PENDING 1
/* the wire form an exchange speaks (proto/dataplane.py): the aligned form (magic MCD2), or
 * MCD1 for workers older than native 3.3.0, which speak nothing else */
#define MC_TCP_FORM_ALIGNED 0
#define MC_TCP_FORM_MCD1 1
/* an aligned exchange ended as a worker that speaks only MCD1 ends one (its MCD1 refusal of
 * our first header, then its close): that worker applied nothing; connect again and run the
 * exchange in MC_TCP_FORM_MCD1 */
#define MC_TCP_ERR_MCD1_ONLY (-10001)

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

/* one connection's part of mc_tcp_exchange_many */
typedef struct {
    int fd;
    int form;                 /* MC_TCP_FORM_ALIGNED or MC_TCP_FORM_MCD1 */
    mc_tcp_request *requests;
    size_t count;
    int result;               /* out: as mc_tcp_exchange returns (answered, or -error) */
    char error[256];          /* out: the error's message when result < 0 */
} mc_tcp_batch;

int mc_tcp_connect(const char *host, int port, int timeout_ms);
int mc_tcp_exchange(int fd, int form, mc_tcp_request *requests, size_t count, int timeout_ms);
/* runs the batches of several connections at once (one poll over all of them), so a batch
 * spread over workers takes about as long as its slowest worker, not the sum. Returns 0, or
 * a negative error before anything was sent; each batch's outcome is in its `result`. */
int mc_tcp_exchange_many(mc_tcp_batch *batches, size_t n, int timeout_ms);
int mc_tcp_close(int fd);
/* CDEF-END */

#endif
