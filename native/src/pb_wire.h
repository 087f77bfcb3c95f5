/* Protobuf's wire format, as far as the master's C-encoded answers need it (answer.c,
 * inventory.c) and the client's decoding of a GetReplicas answer (read_answer.c): a field is a tag byte (number << 3 | wire type: 0 varint, 2 length-delimited)
 * then a varint or a varint length and bytes; proto3 leaves out a scalar that is zero and a
 * string that is empty. Lengths of nested messages come first, so each one's size is
 * computed before it is written. Internal to the library. */
#ifndef MC_PB_WIRE_H
#define MC_PB_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *put_varint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* a varint field's bytes, 0 when proto3 leaves it out (zero) */
static inline size_t scalar_len(uint64_t v) { return v ? 1 + varint_len(v) : 0; }

static inline uint8_t *put_scalar(uint8_t *p, int tag, uint64_t v) {
    if (v == 0) return p;
    *p++ = (uint8_t)tag;
    return put_varint(p, v);
}

static inline size_t nested_len(size_t body) { return 1 + varint_len(body) + body; }

static inline uint8_t *put_nested(uint8_t *p, int tag, size_t body) {
    *p++ = (uint8_t)tag;
    return put_varint(p, body);
}

static inline uint8_t *put_string(uint8_t *p, int tag, const uint8_t *s, size_t n) {
    if (n == 0) return p;
    p = put_nested(p, tag, n);
    memcpy(p, s, n);
    return p + n;
}

/* wire types */
#define PB_VARINT 0
#define PB_FIXED64 1
#define PB_LEN 2
#define PB_FIXED32 5

/* reads a varint at *p (before end) into *v and moves *p past it; 0 when it is cut short
 * or longer than ten bytes */
static inline int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t value = 0;
    const uint8_t *q = *p;
    for (int shift = 0; shift < 70 && q < end; shift += 7) {
        uint8_t byte = *q++;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *v = value;
            *p = q;
            return 1;
        }
    }
    return 0;
}

#endif
