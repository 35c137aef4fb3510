/* The `nanoinfer` subcommands. Each takes the arguments after its name and returns the
 * process exit code (0 ok, 1 runtime error, 2 usage error). */
#ifndef NI_CLI_COMMANDS_H
#define NI_CLI_COMMANDS_H

int cmd_generate(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);

#endif
