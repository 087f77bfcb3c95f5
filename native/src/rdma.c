/* The RDMA transport: libibverbs devices, registrations, RC queue pairs and one-sided batches.
 *
 * One-sided READ/WRITE need nothing from the worker's CPU once the queue pairs are connected:
 * the client posts work requests naming the worker's segment (remote address + rkey) and the
 * adapters move the bytes. The endpoint encoding at the top needs no verbs and is always built.
 */
#include "mc_rdma.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

/* ---- endpoint descriptor: version 1, 32 bytes, network byte order ----
 *  0 u8 version   1 u8 port   2 u8 mtu code (1..5 = 256..4096 bytes)   3 u8 zero
 *  4 u16 lid      6 u16 zero  8 u32 qpn   12 u32 psn   16 u8[16] gid
 * Reserved bytes must be zero so that a later version can give them meaning. */

#define QPN_MASK 0xffffffu   /* queue pair numbers and packet sequence numbers are 24 bits */

static int mtu_code(uint32_t mtu_bytes) {
    for (int code = 1; code <= 5; code++)
        if ((128u << code) == mtu_bytes) return code;
    return 0;
}

static void put16(uint8_t *p, uint16_t v) { v = htons(v); memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { v = htonl(v); memcpy(p, &v, 4); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return ntohs(v); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return ntohl(v); }

int mc_rdma_endpoint_pack(const mc_rdma_endpoint *endpoint, uint8_t *out, size_t capacity) {
    if (capacity < MC_RDMA_DESC_BYTES)
        return mc_fail(-EINVAL, "endpoint needs %d bytes, buffer has %zu", MC_RDMA_DESC_BYTES,
                       capacity);
    int code = mtu_code(endpoint->mtu);
    if (code == 0)
        return mc_fail(-EINVAL, "endpoint mtu %u is not 256, 512, 1024, 2048 or 4096",
                       endpoint->mtu);
    if ((endpoint->qpn & ~QPN_MASK) || (endpoint->psn & ~QPN_MASK) || endpoint->port == 0)
        return mc_fail(-EINVAL, "endpoint qpn/psn must be 24-bit and port non-zero");
    memset(out, 0, MC_RDMA_DESC_BYTES);
    out[0] = MC_RDMA_DESC_VERSION;
    out[1] = endpoint->port;
    out[2] = (uint8_t)code;
    put16(out + 4, endpoint->lid);
    put32(out + 8, endpoint->qpn);
    put32(out + 12, endpoint->psn);
    memcpy(out + 16, endpoint->gid, 16);
    return MC_RDMA_DESC_BYTES;
}

int mc_rdma_endpoint_unpack(const uint8_t *data, size_t length, mc_rdma_endpoint *out) {
    memset(out, 0, sizeof *out);
    if (length != MC_RDMA_DESC_BYTES)
        return mc_fail(-EINVAL, "endpoint descriptor has %zu bytes, expected %d", length,
                       MC_RDMA_DESC_BYTES);
    if (data[0] != MC_RDMA_DESC_VERSION)
        return mc_fail(-EINVAL, "endpoint descriptor version %u, expected %d", data[0],
                       MC_RDMA_DESC_VERSION);
    if (data[2] < 1 || data[2] > 5 || data[1] == 0 || data[3] != 0 || get16(data + 6) != 0)
        return mc_fail(-EINVAL, "endpoint descriptor has a bad port, mtu or reserved field");
    uint32_t qpn = get32(data + 8), psn = get32(data + 12);
    if ((qpn & ~QPN_MASK) || (psn & ~QPN_MASK))
        return mc_fail(-EINVAL, "endpoint descriptor qpn/psn exceed 24 bits");
    out->port = data[1];
    out->mtu = 128u << data[2];
    out->lid = get16(data + 4);
    out->qpn = qpn;
    out->psn = psn;
    memcpy(out->gid, data + 16, 16);
    return 0;
}

#ifdef MC_BUILD_RDMA
#include <endian.h>
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

/* the header's constants are verbs' own values, so Python can read them without verbs.h */
_Static_assert(MC_RDMA_PORT_DOWN == IBV_PORT_DOWN && MC_RDMA_PORT_ACTIVE == IBV_PORT_ACTIVE,
               "port states");
_Static_assert(MC_RDMA_LINK_INFINIBAND == IBV_LINK_LAYER_INFINIBAND &&
               MC_RDMA_LINK_ETHERNET == IBV_LINK_LAYER_ETHERNET, "link layers");
_Static_assert(IBV_MTU_256 == 1 && IBV_MTU_4096 == 5, "mtu codes are the descriptor's");

#define CQ_POLL_BATCH 16
#define SPIN_NS 50000L        /* busy-poll this long before sleeping between polls */
#define NAP_NS 20000L         /* then nap this long: bounds CPU use, adds <= 20 us latency */
#define RD_ATOMIC_MAX 16      /* outstanding READs per queue pair, if the device allows */

struct mc_rdma_context {
    struct ibv_context *verbs;
    struct ibv_pd *pd;
    struct ibv_device_attr device;
    struct ibv_port_attr port_attr;
    mc_rdma_port_info port;
    int gid_index;
    union ibv_gid gid;
};

struct mc_rdma_mr {
    struct ibv_mr *mr;
};

struct mc_rdma_qp {
    mc_rdma_context *context;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    uint32_t max_batch;
    mc_rdma_endpoint local;
    /* preallocated: a queue pair is driven by one thread at a time, so posting a batch
     * allocates nothing */
    struct ibv_send_wr *wrs;
    struct ibv_sge *sges;
};

/* ---- devices ---- */

/* the device list; no kernel verbs support (ENOSYS) means no devices, not an error */
static int device_list(struct ibv_device ***list, int *count) {
    errno = 0;
    *count = 0;
    *list = ibv_get_device_list(count);
    if (*list != NULL) return 0;
    if (errno == 0 || errno == ENOSYS || errno == ENOENT || errno == ENODEV) return 0;
    return mc_fail(-errno, "ibv_get_device_list: %s", strerror(errno));
}

static void free_device_list(struct ibv_device **list) {
    if (list != NULL) ibv_free_device_list(list);
}

static void fill_port(struct ibv_device *device, uint8_t port, const struct ibv_port_attr *attr,
                      mc_rdma_port_info *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", ibv_get_device_name(device));
    out->guid = be64toh(ibv_get_device_guid(device));
    out->port = port;
    out->port_state = attr->state;
    out->active_mtu = 128u << attr->active_mtu;
    /* old providers leave link_layer unset (0): that is InfiniBand */
    out->link_layer = attr->link_layer == IBV_LINK_LAYER_ETHERNET ? MC_RDMA_LINK_ETHERNET
                                                                  : MC_RDMA_LINK_INFINIBAND;
    out->lid = attr->lid;
}

/* appends the ports of one device to out[*count ...], counting past capacity */
static void list_device_ports(struct ibv_device *device, mc_rdma_port_info *out,
                              size_t capacity, int *count) {
    struct ibv_context *verbs = ibv_open_device(device);
    if (verbs == NULL) return;  /* not ours to open (permissions): not usable, not listed */
    struct ibv_device_attr attr;
    if (ibv_query_device(verbs, &attr) == 0) {
        for (uint8_t port = 1; port <= attr.phys_port_cnt; port++) {
            struct ibv_port_attr port_attr;
            if (ibv_query_port(verbs, port, &port_attr) != 0) continue;
            if ((size_t)*count < capacity) fill_port(device, port, &port_attr, &out[*count]);
            (*count)++;
        }
    }
    ibv_close_device(verbs);
}

int mc_rdma_list_ports(mc_rdma_port_info *out, size_t capacity) {
    struct ibv_device **list;
    int devices, count = 0;
    int rc = device_list(&list, &devices);
    if (rc != 0) return rc;
    for (int i = 0; i < devices; i++) list_device_ports(list[i], out, capacity, &count);
    free_device_list(list);
    return count;
}

/* ---- context ---- */

/* the first active port of an open device, or 0 */
static uint8_t active_port(mc_rdma_context *c) {
    for (uint8_t port = 1; port <= c->device.phys_port_cnt; port++)
        if (ibv_query_port(c->verbs, port, &c->port_attr) == 0 &&
            c->port_attr.state == IBV_PORT_ACTIVE)
            return port;
    return 0;
}

static int is_ipv4_mapped(const union ibv_gid *gid) {
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(gid->raw, prefix, sizeof prefix) == 0;
}

/* RoCE needs a GID to route by: prefer RoCE v2 over IPv4 (routable, what most fabrics run),
 * then any RoCE v2 entry, then index 0. InfiniBand routes by lid and uses the port GID (0). */
static int pick_gid_index(mc_rdma_context *c) {
    if (c->port.link_layer != MC_RDMA_LINK_ETHERNET) return 0;
    int any_v2 = -1;
    for (int i = 0; i < c->port_attr.gid_tbl_len; i++) {
        struct ibv_gid_entry entry;
        if (ibv_query_gid_ex(c->verbs, c->port.port, (uint32_t)i, &entry, 0) != 0) continue;
        if (entry.gid_type != IBV_GID_TYPE_ROCE_V2) continue;
        if (is_ipv4_mapped(&entry.gid)) return i;
        if (any_v2 < 0) any_v2 = i;
    }
    return any_v2 >= 0 ? any_v2 : 0;
}

/* opens the named device (or the first with an active port) into c->verbs */
static int open_verbs(const char *name, mc_rdma_context *c) {
    struct ibv_device **list;
    int devices;
    uint8_t port = 0;
    int rc = device_list(&list, &devices);
    if (rc != 0) return rc;
    rc = devices == 0 ? mc_fail(-ENODEV, "no RDMA device found")
                      : mc_fail(-ENODEV, "no RDMA device %s%s", name, *name ? "" : "is active");
    for (int i = 0; i < devices && c->verbs == NULL; i++) {
        if (*name && strcmp(ibv_get_device_name(list[i]), name) != 0) continue;
        c->verbs = ibv_open_device(list[i]);
        if (c->verbs == NULL) {
            rc = mc_fail(-errno, "open RDMA device %s: %s", ibv_get_device_name(list[i]),
                         strerror(errno));
        } else if (ibv_query_device(c->verbs, &c->device) != 0 || (port = active_port(c)) == 0) {
            rc = mc_fail(-ENODEV, "RDMA device %s has no active port",
                         ibv_get_device_name(list[i]));
            ibv_close_device(c->verbs);
            c->verbs = NULL;
        } else {
            fill_port(list[i], port, &c->port_attr, &c->port);
            rc = 0;
        }
    }
    free_device_list(list);
    return rc;
}

int mc_rdma_open(const char *name, int gid_index, mc_rdma_context **out) {
    *out = NULL;
    mc_rdma_context *c = calloc(1, sizeof *c);
    if (c == NULL) return mc_fail(-ENOMEM, "out of memory");
    int rc = open_verbs(name ? name : "", c);
    if (rc == 0) {
        c->gid_index = gid_index >= 0 ? gid_index : pick_gid_index(c);
        if (ibv_query_gid(c->verbs, c->port.port, c->gid_index, &c->gid) != 0)
            rc = mc_fail(-EINVAL, "RDMA device %s has no GID at index %d", c->port.name,
                         c->gid_index);
    }
    if (rc == 0 && (c->pd = ibv_alloc_pd(c->verbs)) == NULL)
        rc = mc_fail(-ENOMEM, "ibv_alloc_pd on %s failed", c->port.name);
    if (rc != 0) {
        mc_rdma_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int mc_rdma_close(mc_rdma_context *c) {
    if (c == NULL) return 0;
    int rc = 0;
    /* EBUSY here means a registration or queue pair outlived its context: a caller bug */
    if (c->pd != NULL && (rc = ibv_dealloc_pd(c->pd)) != 0)
        return mc_fail(-rc, "ibv_dealloc_pd: %s", strerror(rc));
    if (c->verbs != NULL) ibv_close_device(c->verbs);
    free(c);
    return 0;
}

int mc_rdma_context_port(const mc_rdma_context *c, mc_rdma_port_info *out) {
    *out = c->port;
    return 0;
}

/* ---- memory ---- */

int mc_rdma_register(mc_rdma_context *c, void *addr, uint64_t length, int access,
                     mc_rdma_mr **out, uint32_t *lkey, uint32_t *rkey) {
    *out = NULL;
    int flags = (access & MC_RDMA_LOCAL_WRITE ? IBV_ACCESS_LOCAL_WRITE : 0) |
                (access & MC_RDMA_REMOTE_READ ? IBV_ACCESS_REMOTE_READ : 0) |
                /* verbs refuses remote write without local write */
                (access & MC_RDMA_REMOTE_WRITE ? IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE
                                               : 0);
    if (length == 0) return mc_fail(-EINVAL, "cannot register 0 bytes");
    mc_rdma_mr *m = calloc(1, sizeof *m);
    if (m == NULL) return mc_fail(-ENOMEM, "out of memory");
    m->mr = ibv_reg_mr(c->pd, addr, length, flags);
    if (m->mr == NULL) {
        int err = errno ? errno : ENOMEM;
        free(m);
        return mc_fail(-err, "ibv_reg_mr of %llu bytes: %s", (unsigned long long)length,
                       strerror(err));
    }
    *lkey = m->mr->lkey;
    *rkey = m->mr->rkey;
    *out = m;
    return 0;
}

int mc_rdma_deregister(mc_rdma_mr *m) {
    if (m == NULL) return 0;
    int rc = ibv_dereg_mr(m->mr);
    if (rc != 0) return mc_fail(-rc, "ibv_dereg_mr: %s", strerror(rc));
    free(m);
    return 0;
}

/* ---- queue pairs ---- */

static uint32_t random_psn(void) {
    uint32_t psn = 0;
    if (getrandom(&psn, sizeof psn, GRND_NONBLOCK) != sizeof psn)
        psn = (uint32_t)time(NULL) * 2654435761u;  /* any value works; random only avoids
                                                      confusing a reused qpn's old packets */
    return psn & QPN_MASK;
}

static int create_verbs_qp(mc_rdma_qp *q) {
    mc_rdma_context *c = q->context;
    q->cq = ibv_create_cq(c->verbs, (int)q->max_batch, NULL, NULL, 0);
    if (q->cq == NULL) return mc_fail(-ENOMEM, "ibv_create_cq: %s", strerror(errno));
    struct ibv_qp_init_attr init = {
        .send_cq = q->cq, .recv_cq = q->cq, .qp_type = IBV_QPT_RC, .sq_sig_all = 0,
        /* one-sided only: the receive queue stays empty but some providers want one */
        .cap = {.max_send_wr = q->max_batch, .max_recv_wr = 1, .max_send_sge = 1,
                .max_recv_sge = 1},
    };
    q->qp = ibv_create_qp(c->pd, &init);
    if (q->qp == NULL) return mc_fail(-errno ? -errno : -ENOMEM, "ibv_create_qp: %s",
                                      strerror(errno));
    return 0;
}

int mc_rdma_qp_create(mc_rdma_context *c, uint32_t max_batch, mc_rdma_qp **out,
                      mc_rdma_endpoint *local) {
    *out = NULL;
    if (max_batch == 0 || max_batch > (uint32_t)c->device.max_qp_wr ||
        max_batch > (uint32_t)c->device.max_cqe)
        return mc_fail(-EINVAL, "max_batch %u outside 1..%d on %s", max_batch,
                       c->device.max_qp_wr < c->device.max_cqe ? c->device.max_qp_wr
                                                                : c->device.max_cqe,
                       c->port.name);
    mc_rdma_qp *q = calloc(1, sizeof *q);
    if (q == NULL) return mc_fail(-ENOMEM, "out of memory");
    q->context = c;
    q->max_batch = max_batch;
    q->wrs = calloc(max_batch, sizeof *q->wrs);
    q->sges = calloc(max_batch, sizeof *q->sges);
    int rc = q->wrs && q->sges ? create_verbs_qp(q) : mc_fail(-ENOMEM, "out of memory");
    if (rc != 0) {
        mc_rdma_qp_destroy(q);
        return rc;
    }
    q->local = (mc_rdma_endpoint){.lid = c->port.lid, .qpn = q->qp->qp_num, .psn = random_psn(),
                                  .port = c->port.port, .mtu = c->port.active_mtu};
    memcpy(q->local.gid, c->gid.raw, 16);
    *local = q->local;
    *out = q;
    return 0;
}

int mc_rdma_qp_destroy(mc_rdma_qp *q) {
    if (q == NULL) return 0;
    /* the queue pair before its completion queue: verbs refuses the reverse (EBUSY). Destroying
     * it also stops the adapter touching memory for it, so registrations may go after this. */
    int rc = q->qp ? ibv_destroy_qp(q->qp) : 0;
    if (rc == 0 && q->cq) rc = ibv_destroy_cq(q->cq);
    if (rc != 0) return mc_fail(-rc, "destroying a queue pair: %s", strerror(rc));
    free(q->wrs);
    free(q->sges);
    free(q);
    return 0;
}

uint32_t mc_rdma_qp_max_batch(const mc_rdma_qp *q) { return q->max_batch; }

static int modify(mc_rdma_qp *q, struct ibv_qp_attr *attr, int mask, const char *state) {
    int rc = ibv_modify_qp(q->qp, attr, mask);
    if (rc != 0) return mc_fail(-rc, "queue pair %u to %s: %s", q->local.qpn, state,
                                strerror(rc));
    return 0;
}

static int to_init(mc_rdma_qp *q) {
    struct ibv_qp_attr attr = {
        .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = q->local.port,
        .qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
                           IBV_ACCESS_REMOTE_WRITE,
    };
    return modify(q, &attr, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                  IBV_QP_ACCESS_FLAGS, "INIT");
}

static int clamp_rd_atomic(int device_max) {
    return device_max < 1 ? 1 : device_max < RD_ATOMIC_MAX ? device_max : RD_ATOMIC_MAX;
}

/* a global route header is needed on RoCE (no lids) and when the peer is in another subnet */
static void set_address(mc_rdma_qp *q, const mc_rdma_endpoint *remote, struct ibv_ah_attr *ah) {
    const mc_rdma_context *c = q->context;
    ah->dlid = remote->lid;
    ah->port_num = q->local.port;
    if (c->port.link_layer == MC_RDMA_LINK_ETHERNET || remote->lid == 0 ||
        memcmp(remote->gid, c->gid.raw, 8) != 0) {
        ah->is_global = 1;
        memcpy(ah->grh.dgid.raw, remote->gid, 16);
        ah->grh.sgid_index = (uint8_t)c->gid_index;
        ah->grh.hop_limit = 64;
    }
}

static int to_rtr(mc_rdma_qp *q, const mc_rdma_endpoint *remote) {
    uint32_t mtu = remote->mtu < q->local.mtu ? remote->mtu : q->local.mtu;
    struct ibv_qp_attr attr = {
        .qp_state = IBV_QPS_RTR, .path_mtu = (enum ibv_mtu)mtu_code(mtu),
        .dest_qp_num = remote->qpn, .rq_psn = remote->psn, .min_rnr_timer = 12,
        .max_dest_rd_atomic = (uint8_t)clamp_rd_atomic(q->context->device.max_qp_rd_atom),
    };
    set_address(q, remote, &attr.ah_attr);
    return modify(q, &attr, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                  IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER, "RTR");
}

static int to_rts(mc_rdma_qp *q) {
    /* timeout 14: 4.096 us * 2^14 = 67 ms per try; 7 retries ride out a switch hiccup */
    struct ibv_qp_attr attr = {
        .qp_state = IBV_QPS_RTS, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7,
        .sq_psn = q->local.psn,
        .max_rd_atomic = (uint8_t)clamp_rd_atomic(q->context->device.max_qp_init_rd_atom),
    };
    return modify(q, &attr, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                  IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC, "RTS");
}

int mc_rdma_qp_connect(mc_rdma_qp *q, const mc_rdma_endpoint *remote) {
    if (mtu_code(remote->mtu) == 0 || remote->qpn == 0 || remote->port == 0)
        return mc_fail(-EINVAL, "peer endpoint has a bad mtu, qpn or port");
    int rc = to_init(q);
    if (rc == 0) rc = to_rtr(q, remote);
    if (rc == 0) rc = to_rts(q);
    return rc;
}

/* ---- batches ---- */

int mc_rdma_post(mc_rdma_qp *q, int op, const mc_rdma_work *work, size_t count,
                 uint64_t batch_id) {
    if (count == 0 || count > q->max_batch)
        return mc_fail(-EINVAL, "batch of %zu transfers, queue pair takes 1..%u", count,
                       q->max_batch);
    if (op != MC_RDMA_OP_READ && op != MC_RDMA_OP_WRITE)
        return mc_fail(-EINVAL, "unknown RDMA op %d", op);
    for (size_t i = 0; i < count; i++) {
        q->sges[i] = (struct ibv_sge){.addr = work[i].local_addr, .length = work[i].length,
                                      .lkey = work[i].lkey};
        q->wrs[i] = (struct ibv_send_wr){
            .wr_id = batch_id, .sg_list = &q->sges[i], .num_sge = 1,
            .opcode = op == MC_RDMA_OP_READ ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE,
            /* one completion per batch: the queue pair completes work in order, so the last
             * one's completion means all are done */
            .send_flags = i + 1 == count ? IBV_SEND_SIGNALED : 0,
            .next = i + 1 == count ? NULL : &q->wrs[i + 1],
        };
        q->wrs[i].wr.rdma.remote_addr = work[i].remote_addr;
        q->wrs[i].wr.rdma.rkey = work[i].rkey;
    }
    struct ibv_send_wr *bad = NULL;
    int rc = ibv_post_send(q->qp, q->wrs, &bad);
    if (rc != 0)  /* part of the chain may be posted, unsignalled: the caller drops this qp */
        return mc_fail(-rc, "ibv_post_send (transfer %td of %zu): %s",
                       bad ? bad - q->wrs : (ptrdiff_t)0, count, strerror(rc));
    return 0;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* 1: batch_id completed, 0: not yet, <0: a transfer failed */
static int drain(mc_rdma_qp *q, uint64_t batch_id) {
    struct ibv_wc wc[CQ_POLL_BATCH];
    int n = ibv_poll_cq(q->cq, CQ_POLL_BATCH, wc);
    if (n < 0) return mc_fail(-EIO, "ibv_poll_cq failed on queue pair %u", q->local.qpn);
    int done = 0;
    for (int i = 0; i < n; i++) {
        if (wc[i].status != IBV_WC_SUCCESS)
            return mc_fail(-EIO, "RDMA transfer failed: %s (vendor error 0x%x)",
                           ibv_wc_status_str(wc[i].status), wc[i].vendor_err);
        /* another id cannot normally appear (a timed-out queue pair is destroyed, not reused);
         * skipping it keeps a stray completion from ending the wrong batch */
        done |= wc[i].wr_id == batch_id;
    }
    return done;
}

int mc_rdma_poll(mc_rdma_qp *q, uint64_t batch_id, int timeout_ms) {
    if (timeout_ms < 0) return mc_fail(-EINVAL, "timeout_ms must not be negative");
    int64_t start = now_ns(), deadline = start + (int64_t)timeout_ms * 1000000;
    for (;;) {
        int rc = drain(q, batch_id);
        if (rc != 0) return rc < 0 ? rc : 0;
        int64_t now = now_ns();
        if (now >= deadline)
            return mc_fail(-ETIMEDOUT, "RDMA batch not complete after %d ms", timeout_ms);
        /* completions of small batches arrive within microseconds: spin first, then nap so
         * a stalled peer does not cost a whole core */
        if (now - start > SPIN_NS) nanosleep(&(struct timespec){0, NAP_NS}, NULL);
    }
}
#else

/* rdma-core's headers were missing at build time: every verbs entry point says so */
/* the stubs keep the header's signatures, so their parameters go unused */
#pragma GCC diagnostic ignored "-Wunused-parameter"

static int not_built(void) { return mc_fail(-ENOSYS, "built without rdma-core headers"); }

int mc_rdma_list_ports(mc_rdma_port_info *out, size_t capacity) { return not_built(); }
int mc_rdma_open(const char *name, int gid_index, mc_rdma_context **out) { return not_built(); }
int mc_rdma_close(mc_rdma_context *context) { return not_built(); }
int mc_rdma_context_port(const mc_rdma_context *context, mc_rdma_port_info *out) {
    return not_built();
}
int mc_rdma_register(mc_rdma_context *context, void *addr, uint64_t length, int access,
                     mc_rdma_mr **out, uint32_t *lkey, uint32_t *rkey) {
    return not_built();
}
int mc_rdma_deregister(mc_rdma_mr *mr) { return not_built(); }
int mc_rdma_qp_create(mc_rdma_context *context, uint32_t max_batch, mc_rdma_qp **out,
                      mc_rdma_endpoint *local) {
    return not_built();
}
int mc_rdma_qp_connect(mc_rdma_qp *qp, const mc_rdma_endpoint *remote) { return not_built(); }
int mc_rdma_qp_destroy(mc_rdma_qp *qp) { return not_built(); }
uint32_t mc_rdma_qp_max_batch(const mc_rdma_qp *qp) { return 0; }
int mc_rdma_post(mc_rdma_qp *qp, int op, const mc_rdma_work *work, size_t count,
                 uint64_t batch_id) {
    return not_built();
}
int mc_rdma_poll(mc_rdma_qp *qp, uint64_t batch_id, int timeout_ms) { return not_built(); }

#endif
