/* commands.h: one function per subcommand (one file each in src/cli/), dispatched by main.c. Each returns the
 * process exit status. comm is the job's communicator (one rank unless started by mpirun). */
#ifndef MX_COMMANDS_H
#define MX_COMMANDS_H

#include "../dist/comm.h"

int mx_cmd_run(int argc, char **argv, mx_comm *comm);
int mx_cmd_chat(int argc, char **argv, mx_comm *comm);
int mx_cmd_info(int argc, char **argv, mx_comm *comm);
int mx_cmd_perplexity(int argc, char **argv, mx_comm *comm);
int mx_cmd_bench(int argc, char **argv, mx_comm *comm);
int mx_cmd_tokenize(int argc, char **argv, mx_comm *comm);
int mx_cmd_tensor(int argc, char **argv, mx_comm *comm);
int mx_cmd_logits(int argc, char **argv, mx_comm *comm);
int mx_cmd_convert(int argc, char **argv, mx_comm *comm);
int mx_cmd_train(int argc, char **argv, mx_comm *comm);
int mx_cmd_compare(int argc, char **argv, mx_comm *comm);
int mx_cmd_plot(int argc, char **argv, mx_comm *comm);
int mx_cmd_serve(int argc, char **argv, mx_comm *comm);
int mx_cmd_eval(int argc, char **argv, mx_comm *comm);

#endif
