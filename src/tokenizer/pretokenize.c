/* Pre-tokenization: the text is cut into pieces by tiktoken's r50k/gpt2 pattern before BPE,
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * run with PCRE2 (8-bit, UTF, JIT when the platform has it). tiktoken's regex engine reads \s as
 * Unicode's White_Space property, which differs from PCRE2's \s (PCRE2 adds U+180E, and without
 * UCP knows only ASCII spaces), so \s is spelled out here as exactly the White_Space set. */
#include "tokenizer/internal.h"

#include "common/error.h"

/* Unicode White_Space (PropList.txt): TAB..CR, SPACE, NEL, NBSP, OGHAM SPACE MARK, EN QUAD..HAIR
 * SPACE, LINE and PARAGRAPH SEPARATOR, NARROW NBSP, MEDIUM MATHEMATICAL SPACE, IDEOGRAPHIC
 * SPACE. */
#define WS                                                                                         \
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"             \
    "\\x{202F}\\x{205F}\\x{3000}"

static const char pattern[] = "'(?:[sdmt]|ll|ve|re)"
                              "| ?\\p{L}+"
                              "| ?\\p{N}+"
                              "| ?[^" WS "\\p{L}\\p{N}]+"
                              "|[" WS "]+(?![^" WS "])"
                              "|[" WS "]+";

ni_status ni_pretok_init(ni_pretok *p) {
    int err;
    PCRE2_SIZE at;
    p->jit = 0;
    p->md = NULL;
    p->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &err, &at, NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return ni_fail(NI_ERR_INTERNAL, "tokenizer: PCRE2 rejects the pattern at %zu: %s",
                       (size_t)at, (const char *)msg);
    }
    /* without JIT (a build or platform that lacks it) the interpreter gives the same pieces */
    p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
    p->md = pcre2_match_data_create_from_pattern(p->re, NULL);
    if (!p->md) {
        pcre2_code_free(p->re);
        p->re = NULL;
        return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory");
    }
    return NI_OK;
}

void ni_pretok_free(ni_pretok *p) {
    pcre2_match_data_free(p->md);
    pcre2_code_free(p->re);
    p->md = NULL;
    p->re = NULL;
}

size_t ni_pretok_next(ni_pretok *p, const uint8_t *s, size_t n, size_t off) {
    int rc = -1;
    if (p->jit) rc = pcre2_jit_match(p->re, s, n, off, 0, p->md, NULL);
    /* the interpreter also covers a JIT that ran out of stack */
    if (!p->jit || rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(p->re, s, n, off, PCRE2_NO_UTF_CHECK, p->md, NULL);
    if (rc > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->md);
        /* every character matches some branch, so a match starts at off and is non-empty */
        if (ov[0] == off && ov[1] > off && ov[1] <= n) return ov[1];
        if (ov[0] > off && ov[0] <= n) return ov[0]; /* unreachable: unmatched text, own piece */
    }
    /* unreachable with valid UTF-8 short of a resource limit: one character as a piece */
    size_t k = ni_utf8_char_len(s + off, n - off);
    return off + (k ? k : 1);
}
