/* UTF-8 helpers of the tokenizer: validation (so that PCRE2 only ever sees valid text and
 * invalid bytes become pieces of their own), the maximal-subpart rule of Unicode §3.9 and the
 * incremental sanitizer behind the streaming decoder, which holds an incomplete character until
 * its last byte comes and turns ill-formed bytes into U+FFFD. */
#include "tokenizer/internal.h"

#include <string.h>

/* The range the second byte of a sequence may take, by lead byte (Unicode table 3-7); the
 * other continuation bytes are always 80..BF. need is 0 for bytes that cannot lead. */
typedef struct {
    uint8_t need, lo, hi;
} lead_info;

static lead_info lead_of(uint8_t b) {
    if (b < 0x80) return (lead_info){1, 0, 0};
    if (b >= 0xC2 && b <= 0xDF) return (lead_info){2, 0x80, 0xBF};
    if (b == 0xE0) return (lead_info){3, 0xA0, 0xBF};
    if (b == 0xED) return (lead_info){3, 0x80, 0x9F}; /* no surrogates */
    if (b >= 0xE1 && b <= 0xEF) return (lead_info){3, 0x80, 0xBF};
    if (b == 0xF0) return (lead_info){4, 0x90, 0xBF};
    if (b >= 0xF1 && b <= 0xF3) return (lead_info){4, 0x80, 0xBF};
    if (b == 0xF4) return (lead_info){4, 0x80, 0x8F}; /* nothing above U+10FFFF */
    return (lead_info){0, 0, 0};
}

/* How many bytes from s form a valid prefix of one character (at most its full length). */
static size_t valid_part(const uint8_t *s, size_t n, lead_info li) {
    if (n < 2 || s[1] < li.lo || s[1] > li.hi) return 1;
    size_t k = 2;
    while (k < li.need && k < n && s[k] >= 0x80 && s[k] <= 0xBF) k++;
    return k;
}

size_t ni_utf8_char_len(const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    lead_info li = lead_of(s[0]);
    if (li.need <= 1) return li.need;
    return valid_part(s, n, li) == li.need ? li.need : 0;
}

size_t ni_utf8_subpart_len(const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    lead_info li = lead_of(s[0]);
    if (li.need <= 1) return 1;
    return valid_part(s, n, li);
}

size_t ni_utf8_valid_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII, the common case, eight bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = ni_utf8_char_len(s + i, n - i);
        if (k == 0) break;
        i += k;
    }
    return i;
}

static uint8_t *put_replacement(uint8_t *o) {
    o[0] = 0xEF;
    o[1] = 0xBF;
    o[2] = 0xBD;
    return o + 3;
}

size_t ni_utf8_feed(ni_utf8_state *st, const uint8_t *in, size_t n, uint8_t *out) {
    uint8_t *o = out;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = in[i];
        if (st->have) {
            if (b >= st->lo && b <= st->hi) {
                st->buf[st->have++] = b;
                st->lo = 0x80;
                st->hi = 0xBF;
                if (st->have == st->need) {
                    memcpy(o, st->buf, st->have);
                    o += st->have;
                    st->have = 0;
                }
                continue;
            }
            /* the held bytes were a maximal subpart: one U+FFFD, then b starts afresh */
            o = put_replacement(o);
            st->have = 0;
        }
        lead_info li = lead_of(b);
        if (li.need == 1) {
            *o++ = b;
        } else if (li.need == 0) {
            o = put_replacement(o);
        } else {
            st->buf[0] = b;
            st->have = 1;
            st->need = li.need;
            st->lo = li.lo;
            st->hi = li.hi;
        }
    }
    return (size_t)(o - out);
}

size_t ni_utf8_finish(ni_utf8_state *st, uint8_t *out) {
    if (!st->have) return 0;
    st->have = 0;
    put_replacement(out);
    return 3;
}
