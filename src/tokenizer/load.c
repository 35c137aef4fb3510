/* Loading the GPT-2 tokenizer: OpenAI's encoder.json + vocab.bpe or Hugging Face's vocab.json +
 * merges.txt (the same contents under other names). Tokens are written in GPT-2's printable
 * byte alphabet (bytes_to_unicode) and decoded back to raw bytes here. The merge list gives the
 * ranks, as tiktoken derives them: single bytes first, then merge i has rank 256 + i; the tokens
 * no merge produces must be special tokens ("<|endoftext|>"). Every malformed input is an error
 * that names the file, never a crash. */
#include "tokenizer/internal.h"

#include "common/error.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * become U+0100.. in byte order. byte_of[cp] inverts it (-1: not in the alphabet). */
typedef struct {
    int16_t byte_of[324];
} byte_alphabet;

static int printable_byte(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void alphabet_init(byte_alphabet *a) {
    for (int i = 0; i < 324; i++) a->byte_of[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) a->byte_of[printable_byte(b) ? b : 256 + extra++] = (int16_t)b;
}

/* Decodes one token written in the alphabet into out (room for strlen(s) bytes). Returns the
 * byte count, or -1 with *bad set to the offending code point (or -1 for broken UTF-8). */
static long alphabet_decode(const byte_alphabet *a, const char *s, size_t n, uint8_t *out,
                            long *bad) {
    const uint8_t *u = (const uint8_t *)s;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t len = ni_utf8_char_len(u + i, n - i);
        if (len == 0) {
            *bad = -1;
            return -1;
        }
        static const uint8_t lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
        uint32_t cp = u[i] & lead_mask[len];
        for (size_t j = 1; j < len; j++) cp = cp << 6 | (u[i + j] & 0x3F);
        if (cp >= 324 || a->byte_of[cp] < 0) {
            *bad = (long)cp;
            return -1;
        }
        out[k++] = (uint8_t)a->byte_of[cp];
        i += len;
    }
    return (long)k;
}

static ni_status alphabet_error(const char *path, const char *where, const char *tok, long bad) {
    if (bad < 0)
        return ni_fail(NI_ERR_FORMAT, "%s%s: token \"%s\" is not valid UTF-8", path, where, tok);
    return ni_fail(NI_ERR_FORMAT, "%s%s: token \"%s\" has U+%04lX, outside GPT-2's byte alphabet",
                   path, where, tok, (unsigned long)bad);
}

static ni_status read_file(const char *path, char **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return ni_fail(NI_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 20, n = 0;
    char *b = malloc(cap + 1);
    while (b) {
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *nb = realloc(b, 2 * cap + 1);
        if (!nb) {
            free(b);
            b = NULL;
            break;
        }
        b = nb;
        cap *= 2;
    }
    int failed = ferror(f);
    fclose(f);
    if (!b) return ni_fail(NI_ERR_NO_MEMORY, "%s: out of memory", path);
    if (failed) {
        free(b);
        return ni_fail(NI_ERR_IO, "%s: read error", path);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return NI_OK;
}

/* The vocabulary from encoder.json / vocab.json: a JSON object token -> id whose ids are
 * exactly 0 .. n-1. */
static ni_status load_vocab(const char *path, const byte_alphabet *a, ni_vocab *v) {
    char *text;
    size_t len;
    NI_TRY(read_file(path, &text, &len));
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return ni_fail(NI_ERR_FORMAT, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    ni_status st = NI_OK;
    size_t n = json_is_object(root) ? json_object_size(root) : 0;
    uint32_t *start = NULL, *size = NULL;
    uint8_t *raw = NULL;
    if (!json_is_object(root)) {
        st = ni_fail(NI_ERR_FORMAT, "%s: expected a JSON object of token -> id", path);
        goto done;
    }
    if (n < 256 || n > ((size_t)1 << 30)) {
        st = ni_fail(NI_ERR_FORMAT, "%s: %zu tokens (a byte-level BPE has at least 256)", path, n);
        goto done;
    }
    /* first pass: every key's bytes, where each id's bytes are */
    size_t total = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) total += strlen(key);
    start = malloc(n * sizeof *start);
    size = malloc(n * sizeof *size);
    raw = malloc(total + 1);
    if (!start || !size || !raw) {
        st = ni_fail(NI_ERR_NO_MEMORY, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < n; i++) size[i] = UINT32_MAX;
    size_t used = 0;
    json_object_foreach(root, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            (json_int_t)n <= json_integer_value(val)) {
            st = ni_fail(NI_ERR_FORMAT, "%s: token \"%s\" has id %s; ids must be 0 .. %zu", path,
                         key, json_is_integer(val) ? "out of range" : "that is not an integer",
                         n - 1);
            goto done;
        }
        size_t id = (size_t)json_integer_value(val);
        if (size[id] != UINT32_MAX) {
            st = ni_fail(NI_ERR_FORMAT, "%s: id %zu is given to two tokens", path, id);
            goto done;
        }
        long bad = 0, k = alphabet_decode(a, key, strlen(key), raw + used, &bad);
        if (k < 0) {
            st = alphabet_error(path, "", key, bad);
            goto done;
        }
        start[id] = (uint32_t)used;
        size[id] = (uint32_t)k;
        used += (size_t)k;
    }
    /* second pass: bytes in id order */
    v->n = n;
    v->bytes = malloc(used + 1);
    v->off = malloc((n + 1) * sizeof *v->off);
    v->rank = malloc(n * sizeof *v->rank);
    if (!v->bytes || !v->off || !v->rank) {
        st = ni_fail(NI_ERR_NO_MEMORY, "%s: out of memory", path);
        goto done;
    }
    size_t o = 0;
    for (size_t id = 0; id < n; id++) {
        v->off[id] = (uint32_t)o;
        memcpy(v->bytes + o, raw + start[id], size[id]);
        o += size[id];
        v->rank[id] = NI_RANK_NONE;
    }
    v->off[n] = (uint32_t)o;
    if (ni_vocab_index(v) != 0) st = ni_fail(NI_ERR_NO_MEMORY, "%s: out of memory", path);
done:
    free(start);
    free(size);
    free(raw);
    json_decref(root);
    return st;
}

/* Ranks from vocab.bpe / merges.txt: an optional "#version" line, then one merge "A B" a line;
 * merge i (from 0) gives the token A+B rank 256 + i. */
static ni_status load_merges(const char *path, const char *vocab_path, const byte_alphabet *a,
                             ni_vocab *v) {
    char *text;
    size_t len;
    NI_TRY(read_file(path, &text, &len));
    ni_status st = NI_OK;
    uint8_t *buf = malloc(len + 1);
    if (!buf) {
        free(text);
        return ni_fail(NI_ERR_NO_MEMORY, "%s: out of memory", path);
    }
    size_t line_no = 0, merge = 0;
    for (char *p = text, *end = text + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *e = nl ? nl : end;
        line_no++;
        size_t ll = (size_t)(e - p);
        if (ll && p[ll - 1] == '\r') ll--;
        char *line = p;
        p = nl ? nl + 1 : end;
        if (ll == 0) continue;
        if (line_no == 1 && ll >= 8 && memcmp(line, "#version", 8) == 0) continue;
        char *sp = memchr(line, ' ', ll);
        if (!sp || sp == line || sp == line + ll - 1 ||
            memchr(sp + 1, ' ', ll - (size_t)(sp - line) - 1)) {
            st = ni_fail(NI_ERR_FORMAT, "%s:%zu: expected two tokens separated by one space", path,
                         line_no);
            break;
        }
        /* both tokens, decoded back to back: the bytes of the merged token */
        size_t la = (size_t)(sp - line), lb = ll - la - 1;
        char tok[64];
        long bad = 0, ka = alphabet_decode(a, line, la, buf, &bad), kb = -1;
        if (ka >= 0) kb = alphabet_decode(a, sp + 1, lb, buf + ka, &bad);
        if (ka < 0 || kb < 0) {
            snprintf(tok, sizeof tok, "%.*s", (int)(ll < 60 ? ll : 60), line);
            char where[32];
            snprintf(where, sizeof where, ":%zu", line_no);
            st = alphabet_error(path, where, tok, bad);
            break;
        }
        int32_t id = ni_vocab_find(v, buf, (size_t)(ka + kb));
        if (id < 0) {
            snprintf(tok, sizeof tok, "%.*s", (int)(ll < 60 ? ll : 60), line);
            st = ni_fail(NI_ERR_FORMAT, "%s:%zu: the merge \"%s\" makes a token missing from %s",
                         path, line_no, tok, vocab_path);
            break;
        }
        if (v->rank[id] == NI_RANK_NONE) v->rank[id] = (uint32_t)(256 + merge);
        merge++;
    }
    free(buf);
    free(text);
    return st;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Tokens no merge makes must be special tokens, written "<|name|>"; any other one means a
 * merges file that does not go with the vocabulary (or was cut short). */
static ni_status find_specials(ni_tokenizer *t, const char *vocab_path, const char *merges_path) {
    ni_vocab *v = &t->vocab;
    static const char eot[] = "<|endoftext|>";
    t->eos_id = ni_vocab_find(v, (const uint8_t *)eot, sizeof eot - 1);
    if (t->eos_id < 0) return ni_fail(NI_ERR_FORMAT, "%s: no %s token", vocab_path, eot);
    for (size_t id = 0; id < v->n; id++) {
        if (v->rank[id] != NI_RANK_NONE) continue;
        const char *s = (const char *)v->bytes + v->off[id];
        size_t len = v->off[id + 1] - v->off[id];
        if (len < 4 || memcmp(s, "<|", 2) != 0 || memcmp(s + len - 2, "|>", 2) != 0)
            return ni_fail(NI_ERR_FORMAT,
                           "%s: no merge makes token %zu \"%.*s\" of %s (file cut short, or "
                           "from another tokenizer?)",
                           merges_path, id, (int)(len < 40 ? len : 40), s, vocab_path);
        t->n_special++;
    }
    t->special_ids = malloc((t->n_special ? t->n_special : 1) * sizeof *t->special_ids);
    if (!t->special_ids) return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory");
    size_t k = 0;
    for (size_t id = 0; id < v->n; id++)
        if (v->rank[id] == NI_RANK_NONE) t->special_ids[k++] = (int32_t)id;
    return NI_OK;
}

/* dir/name into buf; 0, or -1 when the path does not fit. */
static int join_path(char *buf, size_t cap, const char *dir, const char *name) {
    int k = snprintf(buf, cap, "%s/%s", dir, name);
    return k < 0 || (size_t)k >= cap ? -1 : 0;
}

ni_status ni_tokenizer_open(const char *dir, ni_tokenizer **out) {
    if (!dir || !out) return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_open: NULL argument");
    *out = NULL;
    char vocab_path[4096], merges_path[4096];
    if (join_path(vocab_path, sizeof vocab_path, dir, "encoder.json") != 0 ||
        join_path(merges_path, sizeof merges_path, dir, "merges.txt") != 0)
        return ni_fail(NI_ERR_IO, "%.200s...: tokenizer directory path too long", dir);
    if (file_exists(vocab_path)) {
        join_path(merges_path, sizeof merges_path, dir, "vocab.bpe");
    } else {
        join_path(vocab_path, sizeof vocab_path, dir, "vocab.json");
        if (!file_exists(vocab_path)) {
            struct stat sb;
            if (stat(dir, &sb) != 0)
                return ni_fail(NI_ERR_IO, "%s: tokenizer directory: %s", dir, strerror(errno));
            return ni_fail(NI_ERR_IO,
                           "%s: no tokenizer files (encoder.json + vocab.bpe, or vocab.json + "
                           "merges.txt)",
                           dir);
        }
    }
    ni_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory");
    byte_alphabet a;
    alphabet_init(&a);
    ni_status st = load_vocab(vocab_path, &a, &t->vocab);
    if (st == NI_OK) st = load_merges(merges_path, vocab_path, &a, &t->vocab);
    if (st == NI_OK) {
        /* every byte must be a token, or BPE could be left with an unencodable part */
        for (int b = 0; b < 256 && st == NI_OK; b++) {
            uint8_t c = (uint8_t)b;
            int32_t id = ni_vocab_find(&t->vocab, &c, 1);
            if (id < 0)
                st = ni_fail(NI_ERR_FORMAT, "%s: byte 0x%02x has no token", vocab_path, b);
            else
                t->vocab.rank[id] = (uint32_t)b; /* below every merge; only "mergeable" matters */
        }
    }
    if (st == NI_OK) st = find_specials(t, vocab_path, merges_path);
    if (st == NI_OK) st = ni_pretok_init(&t->pretok);
    if (st == NI_OK && ni_cache_init(&t->cache) != 0)
        st = ni_fail(NI_ERR_NO_MEMORY, "tokenizer: out of memory");
    if (st != NI_OK) {
        ni_tokenizer_close(t);
        return st;
    }
    *out = t;
    return NI_OK;
}

void ni_tokenizer_close(ni_tokenizer *t) {
    if (!t) return;
    ni_vocab_free(&t->vocab);
    free(t->special_ids);
    if (t->pretok.re) ni_pretok_free(&t->pretok);
    ni_cache_free(&t->cache);
    ni_bpe_scratch_free(&t->scratch);
    free(t);
}

size_t ni_tokenizer_vocab_size(const ni_tokenizer *t) {
    return t->vocab.n;
}

int32_t ni_tokenizer_eos_id(const ni_tokenizer *t) {
    return t->eos_id;
}

/* A directory that holds either pair of tokenizer files. */
static int has_tokenizer(const char *dir) {
    char p[4096];
    if (join_path(p, sizeof p, dir, "encoder.json") == 0 && file_exists(p)) return 1;
    return join_path(p, sizeof p, dir, "vocab.json") == 0 && file_exists(p);
}

ni_status ni_tokenizer_default_dir(char *buf, size_t cap) {
    if (!buf || cap == 0) return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_default_dir: no buffer");
    const char *env = getenv("NANOINFER_TOKENIZER");
    const char *pick = NULL;
    char exe_dir[4096] = "";
    if (env && *env) pick = env;
#ifdef NI_DEFAULT_TOKENIZER_DIR
    if (!pick && has_tokenizer(NI_DEFAULT_TOKENIZER_DIR)) pick = NI_DEFAULT_TOKENIZER_DIR;
#endif
    if (!pick) {
        /* the repository of the executable: <repo>/build/nanoinfer -> <repo>/.cache/tokenizer */
        char exe[4096];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = '\0';
            char *slash = strrchr(exe, '/');
            if (slash) {
                *slash = '\0';
                snprintf(exe_dir, sizeof exe_dir, "%.4000s/../.cache/tokenizer", exe);
                if (has_tokenizer(exe_dir)) pick = exe_dir;
            }
        }
    }
    if (!pick) pick = ".cache/tokenizer";
    if (strlen(pick) >= cap)
        return ni_fail(NI_ERR_INVALID_ARG, "ni_tokenizer_default_dir: path longer than %zu", cap);
    memcpy(buf, pick, strlen(pick) + 1);
    return NI_OK;
}
