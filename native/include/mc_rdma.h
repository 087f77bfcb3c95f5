/* The RDMA transport over libibverbs: devices, protection domain, registered memory, RC queue
 * pairs, one-sided READ/WRITE batches and their completions.
 *
 * Compiled for real when rdma-core's headers exist (MC_BUILD_RDMA, `MC_HAS_RDMA`); otherwise
 * every verbs function returns -ENOSYS ("built without rdma-core headers"). The endpoint
 * descriptor's encoding needs no verbs and works in both builds, so two processes agree on the
 * format whatever they were built with.
 *
 * Threading: a context and its memory registrations may be shared by threads; one queue pair
 * must be driven (post, then poll) by one thread at a time. Each queue pair has its own
 * completion queue, so a batch waits for its own completions without demultiplexing.
 */
#ifndef MC_RDMA_H
#define MC_RDMA_H

#include "mc_common.h"

/* CDEF-BEGIN */
/* the endpoint descriptor's wire format: version 1 is 32 bytes, see mc_rdma_endpoint_pack */
#define MC_RDMA_DESC_VERSION 1
#define MC_RDMA_DESC_BYTES 32
#define MC_RDMA_NAME_BYTES 64
/* ibv_port_state and ibv_port_attr.link_layer values (checked against verbs.h in rdma.c) */
#define MC_RDMA_PORT_DOWN 1
#define MC_RDMA_PORT_INIT 2
#define MC_RDMA_PORT_ARMED 3
#define MC_RDMA_PORT_ACTIVE 4
#define MC_RDMA_LINK_INFINIBAND 1
#define MC_RDMA_LINK_ETHERNET 2
#define MC_RDMA_OP_READ 1
#define MC_RDMA_OP_WRITE 2
/* access flags of a registration: READ targets need local write; read-only memory (a WRITE
 * source such as a bytes object) cannot be registered with it. Remote write implies local. */
#define MC_RDMA_LOCAL_WRITE 1
#define MC_RDMA_REMOTE_READ 2
#define MC_RDMA_REMOTE_WRITE 4

/* one port of one device */
typedef struct {
    char name[64];             /* MC_RDMA_NAME_BYTES: "mlx5_0" */
    uint64_t guid;             /* node GUID, host byte order */
    uint8_t port;              /* 1-based port number */
    int port_state;            /* MC_RDMA_PORT_* */
    uint32_t active_mtu;       /* bytes: 256 .. 4096 */
    int link_layer;            /* MC_RDMA_LINK_*: InfiniBand (lid routed) or Ethernet (RoCE) */
    uint16_t lid;
} mc_rdma_port_info;

/* what a peer needs to connect its queue pair to ours */
typedef struct {
    uint16_t lid;              /* InfiniBand local id (0 on RoCE) */
    uint8_t gid[16];           /* global id: routes RoCE and cross-subnet InfiniBand */
    uint32_t qpn;              /* queue pair number, 24 bits */
    uint32_t psn;              /* first packet sequence number, 24 bits */
    uint8_t port;
    uint32_t mtu;              /* bytes: the path uses the smaller of both sides */
} mc_rdma_endpoint;

/* one one-sided transfer: `length` bytes between local memory and the peer's */
typedef struct {
    uint64_t local_addr;
    uint32_t lkey;
    uint64_t remote_addr;
    uint32_t rkey;
    uint32_t length;
} mc_rdma_work;

typedef struct mc_rdma_context mc_rdma_context;
typedef struct mc_rdma_mr mc_rdma_mr;
typedef struct mc_rdma_qp mc_rdma_qp;

/* fills up to `capacity` ports and returns how many exist (0: no device, not an error) */
int mc_rdma_list_ports(mc_rdma_port_info *out, size_t capacity);

/* opens `name` ("" or NULL: the first device with an active port) with a protection domain;
 * gid_index < 0 picks one (RoCE v2 over IPv4 when the port is Ethernet) */
int mc_rdma_open(const char *name, int gid_index, mc_rdma_context **out);
int mc_rdma_close(mc_rdma_context *context);
int mc_rdma_context_port(const mc_rdma_context *context, mc_rdma_port_info *out);

int mc_rdma_register(mc_rdma_context *context, void *addr, uint64_t length, int access,
                     mc_rdma_mr **out, uint32_t *lkey, uint32_t *rkey);
int mc_rdma_deregister(mc_rdma_mr *mr);

/* an RC queue pair (and its completion queue) for up to max_batch outstanding transfers;
 * `local` receives the endpoint to send to the peer */
int mc_rdma_qp_create(mc_rdma_context *context, uint32_t max_batch, mc_rdma_qp **out,
                      mc_rdma_endpoint *local);
/* INIT -> RTR -> RTS towards the peer's endpoint */
int mc_rdma_qp_connect(mc_rdma_qp *qp, const mc_rdma_endpoint *remote);
int mc_rdma_qp_destroy(mc_rdma_qp *qp);
uint32_t mc_rdma_qp_max_batch(const mc_rdma_qp *qp);

/* posts `count` transfers as one chain, only the last signalled, tagged with batch_id */
int mc_rdma_post(mc_rdma_qp *qp, int op, const mc_rdma_work *work, size_t count,
                 uint64_t batch_id);
/* waits up to timeout_ms for batch_id's completion: 0, -EIO (a transfer failed; the queue
 * pair is then in error and must be destroyed) or -ETIMEDOUT */
int mc_rdma_poll(mc_rdma_qp *qp, uint64_t batch_id, int timeout_ms);

/* fixed, versioned encoding: returns MC_RDMA_DESC_BYTES, or -EINVAL (small buffer, bad value) */
int mc_rdma_endpoint_pack(const mc_rdma_endpoint *endpoint, uint8_t *out, size_t capacity);
/* -EINVAL (with the reason) for a wrong length, version or out-of-range field */
int mc_rdma_endpoint_unpack(const uint8_t *data, size_t length, mc_rdma_endpoint *out);
/* CDEF-END */

#endif
