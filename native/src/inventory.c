/* Encodes a heartbeat answer's inventory updates (see mc_inventory.h) in protobuf's wire
 * format (pb_wire.h). */
#include "mc_inventory.h"
#include "pb_wire.h"

#include <errno.h>

/* HeartbeatResponse { repeated InventoryUpdate updates = 2; }
 * InventoryUpdate { uint64 seq = 1; bool removed = 2; InventoryEntry entry = 3; }
 * InventoryEntry { string key = 1; uint64 put_id = 2; uint32 segment_id = 3; uint64 offset = 4;
 *                  uint64 size = 5; uint32 replica_num = 6; bool soft_pin = 7;
 *                  bool hard_pin = 8; } */
enum {
    TAG_UPDATES = 2 << 3 | 2,
    TAG_SEQ = 1 << 3, TAG_REMOVED = 2 << 3, TAG_ENTRY = 3 << 3 | 2,
    TAG_KEY = 1 << 3 | 2, TAG_PUT_ID = 2 << 3, TAG_SEGMENT_ID = 3 << 3, TAG_OFFSET = 4 << 3,
    TAG_SIZE = 5 << 3, TAG_REPLICA_NUM = 6 << 3, TAG_SOFT_PIN = 7 << 3, TAG_HARD_PIN = 8 << 3,
};

enum { SEQ, REMOVED, PUT_ID, SEGMENT_ID, OFFSET, SIZE, REPLICA_NUM, SOFT_PIN, HARD_PIN, KEY_LEN };

static size_t entry_len(const uint64_t *u) {
    return ((size_t)u[KEY_LEN] ? nested_len((size_t)u[KEY_LEN]) : 0)
           + scalar_len(u[PUT_ID]) + scalar_len(u[SEGMENT_ID])
           + scalar_len(u[OFFSET]) + scalar_len(u[SIZE])
           + scalar_len(u[REPLICA_NUM]) + scalar_len(u[SOFT_PIN])
           + scalar_len(u[HARD_PIN]);
}

static size_t update_len(const uint64_t *u) {
    return scalar_len(u[SEQ]) + scalar_len(u[REMOVED])
           + nested_len(entry_len(u));
}

static int check_update(const uint64_t *u, size_t i) {
    if (u[SEGMENT_ID] > UINT32_MAX || u[REPLICA_NUM] > UINT32_MAX)
        return mc_fail(-EINVAL, "inventory update %zu: segment id or replica count over 32 bits",
                       i);
    if (u[REMOVED] > 1 || u[SOFT_PIN] > 1 || u[HARD_PIN] > 1)
        return mc_fail(-EINVAL, "inventory update %zu: a flag is neither 0 nor 1", i);
    return 0;
}

int64_t mc_encode_inventory_updates(uint8_t *out, size_t cap, size_t *needed,
                                    const uint64_t *fields, size_t n,
                                    const uint8_t *keys, size_t keys_len) {
    size_t total = 0, key_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const uint64_t *u = fields + i * MC_INVENTORY_UPDATE_FIELDS;
        int rc = check_update(u, i);
        if (rc != 0) return rc;
        if (u[KEY_LEN] > keys_len - key_bytes)
            return mc_fail(-EINVAL, "inventory keys end inside update %zu", i);
        key_bytes += (size_t)u[KEY_LEN];
        total += nested_len(update_len(u));
    }
    if (key_bytes != keys_len)
        return mc_fail(-EINVAL, "%zu bytes of inventory keys left over after %zu updates",
                       keys_len - key_bytes, n);
    if (total > cap) {
        *needed = total;
        return mc_fail(-ENOSPC, "%zu bytes of inventory updates do not fit in %zu", total, cap);
    }
    uint8_t *p = out;
    const uint8_t *key = keys;
    for (size_t i = 0; i < n; i++) {
        const uint64_t *u = fields + i * MC_INVENTORY_UPDATE_FIELDS;
        size_t key_len = (size_t)u[KEY_LEN];
        p = put_nested(p, TAG_UPDATES, update_len(u));
        p = put_scalar(p, TAG_SEQ, u[SEQ]);
        p = put_scalar(p, TAG_REMOVED, u[REMOVED]);
        p = put_nested(p, TAG_ENTRY, entry_len(u));
        p = put_string(p, TAG_KEY, key, key_len);
        p = put_scalar(p, TAG_PUT_ID, u[PUT_ID]);
        p = put_scalar(p, TAG_SEGMENT_ID, u[SEGMENT_ID]);
        p = put_scalar(p, TAG_OFFSET, u[OFFSET]);
        p = put_scalar(p, TAG_SIZE, u[SIZE]);
        p = put_scalar(p, TAG_REPLICA_NUM, u[REPLICA_NUM]);
        p = put_scalar(p, TAG_SOFT_PIN, u[SOFT_PIN]);
        p = put_scalar(p, TAG_HARD_PIN, u[HARD_PIN]);
        key += key_len;
    }
    if ((size_t)(p - out) != total)  /* the sizing and the writing disagree: a bug here */
        return mc_fail(-EFAULT, "inventory encoder wrote %zu bytes of %zu", (size_t)(p - out),
                       total);
    return (int64_t)total;
}
