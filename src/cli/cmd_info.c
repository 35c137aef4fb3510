/* `nanoinfer info`: a model's config, parameter count and weight bytes. */
#include <stdio.h>
#include <stdlib.h>

#include "cli/args.h"
#include "cli/commands.h"

int cmd_info(int argc, char **argv) {
    cli_model_args ma;
    cli_model_args_init(&ma);
    for (int i = 0; i < argc; i++) {
        int r = cli_model_arg(&ma, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (cli_is(argv[i], "--help") || cli_is(argv[i], "-h")) {
            printf("usage: nanoinfer info --model M\n\n%s", cli_model_help);
            return 0;
        }
        return cli_usage_error("unknown option '%s'", argv[i]);
    }
    ni_model *m = NULL;
    int rc = cli_open(&ma, 0, 0, &m, NULL);
    if (rc) return rc;
    const ni_config *c = ni_model_config(m);
    size_t n = ni_model_param_count(m);
    const char *dir = ni_model_dir(m);
    printf("model        %s\n", ma.model);
    printf("source       %s\n", dir ? dir : "random weights (named config)");
    printf("n_layer      %zu\n", c->n_layer);
    printf("n_head       %zu\n", c->n_head);
    printf("n_embd       %zu\n", c->n_embd);
    printf("vocab_size   %zu\n", c->vocab_size);
    printf("n_ctx        %zu\n", c->n_ctx);
    printf("ln_eps       %g\n", (double)c->ln_eps);
    printf("eos_id       %d\n", (int)c->eos_id);
    printf("parameters   %zu (%.1f M)\n", n, (double)n / 1e6);
    printf("weights f32  %zu bytes (%.2f GB)\n", n * 4, (double)n * 4 / 1e9);
    /* the GPU's 16-bit type (--dtype): bf16 or fp16, two bytes either way */
    printf("weights %-4s %zu bytes (%.2f GB)\n", ni_dtype_name(ma.dtype), n * 2,
           (double)n * 2 / 1e9);
    ni_model_close(m);
    return 0;
}
