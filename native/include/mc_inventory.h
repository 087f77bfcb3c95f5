/* The inventory updates of the master's heartbeat answers, encoded in C: the `updates` field
 * of a HeartbeatResponse (proto/mooncake.proto), repeated InventoryUpdate { seq, removed,
 * InventoryEntry entry }.
 *
 * After a burst of writes and removals the master hands each worker thousands of updates,
 * and building them as protobuf message objects from Python took 2.3 us each with the GIL
 * held: every read the master answered meanwhile waited. The caller flattens each update
 * into integers plus its key; one call writes them all. The bytes equal protobuf's own
 * encoding of the same updates (fields in number order, zeros left out, the entry always
 * present): tests compare the two.
 */
#ifndef MC_INVENTORY_H
#define MC_INVENTORY_H

#include "mc_common.h"

/* CDEF-BEGIN */
/* per update of mc_encode_inventory_updates' `fields`: seq, removed, put_id, segment_id,
 * offset, size, replica_num, soft_pin, hard_pin, key bytes */
#define MC_INVENTORY_UPDATE_FIELDS 10

/* Writes n updates as HeartbeatResponse `updates` fields (number 2) into out[0..cap) and
 * returns their length; `keys` holds the updates' keys (UTF-8) one after another. -ENOSPC
 * with *needed set when cap is too small; -EINVAL when a field is out of its type's range
 * (segment_id and replica_num are 32-bit, the flags 0 or 1), or fields and keys do not add
 * up. */
int64_t mc_encode_inventory_updates(uint8_t *out, size_t cap, size_t *needed,
                                    const uint64_t *fields, size_t n,
                                    const uint8_t *keys, size_t keys_len);
/* CDEF-END */

#endif
