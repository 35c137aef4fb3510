/* nanoinfer — a GPT-2 inference engine in C and CUDA C.
 *
 * This is the only header users include. Every function that can fail returns an ni_status;
 * the message of the last failure on the calling thread is ni_last_error(). Library code never
 * exits or aborts on bad input. */
#ifndef NANOINFER_H
#define NANOINFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ------------------------------------------------------------------------------ */

typedef enum {
    NI_OK = 0,
    NI_ERR_INVALID_ARG, /* a caller's argument is out of range */
    NI_ERR_IO,          /* a file could not be opened, read or mapped */
    NI_ERR_FORMAT,      /* a model or tokenizer file is malformed */
    NI_ERR_NO_MEMORY,   /* host or device memory ran out, or a request does not fit */
    NI_ERR_CONTEXT,     /* prompt plus new tokens exceed the model's context */
    NI_ERR_UNSUPPORTED, /* a feature this build or backend does not have */
    NI_ERR_DEVICE,      /* a CUDA or cuBLAS call failed */
    NI_ERR_INTERNAL,
} ni_status;

/* The message of the last error on this thread ("" if none). */
const char *ni_last_error(void);
const char *ni_status_name(ni_status s);

/* ---- models ------------------------------------------------------------------------------ */

typedef struct {
    size_t n_layer;
    size_t n_head;
    size_t n_embd;
    size_t vocab_size;
    size_t n_ctx; /* maximum positions (n_positions) */
    float ln_eps;
    int32_t eos_id; /* <|endoftext|>; vocab_size - 1 when the config does not say */
} ni_config;

typedef struct {
    uint64_t seed; /* seed of the random weights of named configs (ignored for files) */
} ni_model_opts;

typedef struct ni_model ni_model;

/* name_or_path: a named random-weight config (see ni_model_names) or a Hugging Face model
 * directory holding config.json and model.safetensors. opts may be NULL. */
ni_status ni_model_open(const char *name_or_path, const ni_model_opts *opts, ni_model **out);
void ni_model_close(ni_model *m);
const ni_config *ni_model_config(const ni_model *m);
size_t ni_model_param_count(const ni_model *m);
/* The directory the model was loaded from, or NULL for a named random config. */
const char *ni_model_dir(const ni_model *m);
/* NULL-terminated list of the named random-weight configs. */
const char *const *ni_model_names(void);

/* ---- engines ----------------------------------------------------------------------------- */

typedef enum { NI_BACKEND_CPU = 0, NI_BACKEND_CUDA = 1 } ni_backend;

typedef enum {
    NI_PRESET_BASELINE = 0, /* recompute the whole sequence each step, sort-based sampler */
    NI_PRESET_KV_CACHE,     /* KV cache, sort-based sampler */
    NI_PRESET_SAMPLING,     /* KV cache, rejection (sorting-free) sampler */
    NI_PRESET_CUDA_GRAPHS,  /* KV cache, rejection sampler, decode step as a CUDA graph */
    NI_PRESET_COUNT
} ni_preset;

typedef enum { NI_DTYPE_F32 = 0, NI_DTYPE_BF16, NI_DTYPE_F16 } ni_dtype;

typedef struct {
    ni_backend backend;
    ni_preset preset;
    ni_dtype dtype;   /* weights and activations; the CPU computes in f32 */
    size_t max_batch; /* sequences at once; 0 means 1 */
    size_t max_seq;   /* tokens per sequence (prompt + new); 0 means the model's context */
    int n_threads;    /* CPU threads; 0 means OpenMP's default */
} ni_engine_opts;

typedef struct ni_engine ni_engine;

ni_status ni_engine_create(ni_model *m, const ni_engine_opts *opts, ni_engine **out);
void ni_engine_destroy(ni_engine *e);
const char *ni_preset_name(ni_preset p);
/* Parses "baseline", "kv_cache", "sampling", "cuda_graphs"; NI_ERR_INVALID_ARG otherwise. */
ni_status ni_preset_parse(const char *name, ni_preset *out);
const char *ni_backend_name(ni_backend b);
/* "f32", "bf16", "fp16" (as `--dtype` takes them). */
const char *ni_dtype_name(ni_dtype d);

/* ---- generation -------------------------------------------------------------------------- */

/* A batch of prompts, each its own length (ragged). */
typedef struct {
    size_t n_seq;
    const int32_t *const *tokens; /* tokens[i] holds lens[i] ids */
    const size_t *lens;
} ni_batch;

/* Sampling semantics (DESIGN.md §6): probs = softmax(logits / temperature) in f32; top-k keeps
 * token i iff fewer than top_k tokens have a strictly larger prob; top-p then keeps i iff the
 * mass of the renormalized top-k distribution strictly larger than p_i is < top_p; min-p keeps i
 * iff p_i >= min_p * max p. temperature 0 or top_k 1 is greedy (lowest index on ties). */
typedef struct {
    float temperature; /* 0: greedy */
    size_t top_k;      /* 0: off */
    float top_p;       /* >= 1: off */
    float min_p;       /* 0: off */
    uint64_t seed;
    size_t max_new_tokens;
    int ignore_eos; /* keep generating after <|endoftext|> (the benchmark does) */
} ni_sampling;

/* Called once per generated token, in step order; within a step, in sequence order.
 * Return non-zero to stop the whole generation early. */
typedef int (*ni_token_cb)(void *user, size_t seq, size_t step, int32_t token);

ni_status ni_generate(ni_engine *e, const ni_batch *prompts, const ni_sampling *s, ni_token_cb cb,
                      void *user);

/* Logits of every position of one token sequence: out holds len * vocab_size floats,
 * row-major [position][vocab]. */
ni_status ni_logits(ni_engine *e, const int32_t *tokens, size_t len, float *out);

/* Statistics of the last ni_generate call. */
typedef struct {
    double ttft_ms;          /* prompt submitted -> first token sampled and on the host */
    double decode_ms;        /* all decode steps after the first token */
    size_t decode_steps;     /* steps timed in decode_ms */
    size_t prompt_tokens;    /* summed over the batch */
    size_t generated_tokens; /* summed over the batch */
    size_t peak_mem_bytes;   /* the engine's bytes at their peak (weights included) */
    size_t weight_bytes;     /* bytes of the weights the engine reads each step */
    size_t fused_steps;      /* decode steps run as the single fused kernel (CUDA, NI_FUSED) */
} ni_stats;

ni_status ni_engine_stats(const ni_engine *e, ni_stats *out);

/* ---- tokenizer --------------------------------------------------------------------------- */

typedef struct ni_tokenizer ni_tokenizer;

/* Loads OpenAI's encoder.json + vocab.bpe, or Hugging Face's vocab.json + merges.txt, from dir
 * (whichever pair is there). */
ni_status ni_tokenizer_open(const char *dir, ni_tokenizer **out);
void ni_tokenizer_close(ni_tokenizer *t);
size_t ni_tokenizer_vocab_size(const ni_tokenizer *t);
int32_t ni_tokenizer_eos_id(const ni_tokenizer *t);
/* Encodes len bytes of UTF-8 text. allow_special: "<|endoftext|>" becomes its id; otherwise
 * it is ordinary text (tiktoken's encode_ordinary). *ids is malloc'ed; free() it. */
ni_status ni_tokenizer_encode(ni_tokenizer *t, const char *text, size_t len, int allow_special,
                              int32_t **ids, size_t *n_ids);
/* Decodes ids to the exact bytes (not necessarily valid UTF-8). *text is malloc'ed and
 * NUL-terminated; *len excludes the NUL. */
ni_status ni_tokenizer_decode(const ni_tokenizer *t, const int32_t *ids, size_t n_ids, char **text,
                              size_t *len);
/* The bytes of one token (pointing into the tokenizer; not NUL-terminated). */
ni_status ni_tokenizer_token_bytes(const ni_tokenizer *t, int32_t id, const char **bytes,
                                   size_t *len);
/* The directory to load when the user names none, into buf: $NANOINFER_TOKENIZER if set; else
 * the first of these that holds tokenizer files: NI_DEFAULT_TOKENIZER_DIR (a path fixed at build
 * time, when defined), <the executable's directory>/../.cache/tokenizer; else ".cache/tokenizer"
 * (relative to the current directory). */
ni_status ni_tokenizer_default_dir(char *buf, size_t cap);
/* Threads: one tokenizer encodes on one thread at a time (it keeps a cache of encoded words);
 * the functions taking a const tokenizer may run concurrently with each other. */

/* Streaming decode for printing tokens as they are generated: push one id at a time and print
 * what comes back. A character split across tokens is held until it completes, and bytes that
 * cannot form a character come out as U+FFFD, so the output is always valid UTF-8 (all of it
 * together equals decoding all ids at once with errors="replace"). */
typedef struct ni_tokenizer_stream ni_tokenizer_stream;

ni_status ni_tokenizer_stream_new(const ni_tokenizer *t, ni_tokenizer_stream **out);
/* *text (NUL-terminated, *len bytes, possibly 0) stays valid until the next call on s. */
ni_status ni_tokenizer_stream_push(ni_tokenizer_stream *s, int32_t id, const char **text,
                                   size_t *len);
/* Ends the stream: a held incomplete character comes out as U+FFFD. s can then go on. */
ni_status ni_tokenizer_stream_flush(ni_tokenizer_stream *s, const char **text, size_t *len);
void ni_tokenizer_stream_free(ni_tokenizer_stream *s);

#ifdef __cplusplus
}
#endif
#endif
