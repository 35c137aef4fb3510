/* The `nanoinfer` command: dispatches to one subcommand per file in this folder. */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"generate", cmd_generate, "generate tokens from prompts (ids or text)"},
    {"score", cmd_score, "mean negative log-likelihood and perplexity of a text"},
    {"logits", cmd_logits, "write the logits of every position of a token sequence"},
    {"info", cmd_info, "print a model's config, parameter count and weight bytes"},
    {"bench", cmd_bench, "benchmark the engines across batch sizes (JSON, CSV, tables)"},
    {"tokenize", cmd_tokenize, "print the GPT-2 token ids of a text"},
    {"detokenize", cmd_detokenize, "print the text of GPT-2 token ids"},
};

static void usage(FILE *f) {
    fputs("nanoinfer - a GPT-2 inference engine in C and CUDA C\n\n"
          "usage: nanoinfer <command> [options]   (nanoinfer <command> --help for each)\n\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fputs("\nenvironment (GPU engines; bench records them in its JSON):\n"
          "  NI_FUSED=1         the fused decode step (one persistent kernel) for every batch of\n"
          "                     up to 8 rows, bf16 (default off: the per-kernel path is faster)\n"
          "  NI_GRAPH_STEPS=N   cuda_graphs: decode steps between host wake-ups (default 8)\n"
          "  NI_NO_PDL=1        launch kernels without programmatic dependent launch\n"
          "  NI_GEMV_MAX_ROWS=N the most rows a matmul gives our GEMV kernel (default: 16, and\n"
          "                     32 for the logits; above: gemm_stream up to 32, then cuBLASLt)\n"
          "  NI_GEMM_STREAM=0   cuBLASLt instead of our TMA-streamed product for 17-32 rows\n"
          "  NI_GEMM_STREAM_PARTS=off|P  cuBLASLt where that product would split its inputs\n"
          "                     (past 2048 columns), or P column ranges where they fit\n"
          "  NI_ATTN_PRELOAD=0  the decode attention loads its cached keys and values only after\n"
          "                     the kernel before it has finished\n"
          "  NI_FUSED_TRACE=1   print the fused step's phase times when an engine closes\n"
          "  NI_FUSED_TRACE_FILE=F  with a -DDF_TRACE_DETAIL build: append each eager fused\n"
          "                     step's per-block trace to F (tools/fused_trace.py reads it)\n",
          f);
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) {
            int rc = commands[i].run(argc - 2, argv + 2);
            /* output lost (a full disk, a closed pipe) is a failure, not a success */
            if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "nanoinfer: %s: cannot write its output\n", argv[1]);
                if (rc == 0) rc = 1;
            }
            return rc;
        }
    fprintf(stderr, "nanoinfer: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
