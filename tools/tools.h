/* tools.h: the subcommands of the `carve` binary. Each takes argv after the
 * subcommand name and returns the process exit status. */
#ifndef CARVE_TOOLS_H
#define CARVE_TOOLS_H
#include "carve.h"

int cmd_check(int argc, char **argv);
int cmd_compile(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_explain(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_cluster(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_profile(int argc, char **argv);
int cmd_export(int argc, char **argv);

/* Rank programs written as DIR/rankN.prog as codegen_ranks makes them
   (rank_file_write is a RankSink): DIR is made before the first; `arena`
   gets the largest arena of those written, nbufs .. nstep rank 0's sizes. */
typedef struct RankFiles {
  const char *dir;
  int written;
  int64_t arena;
  int nbufs, ninit, nstep;
} RankFiles;
bool rank_file_write(const Program *p, void *files);
/* Removes DIR/rankN.prog from N = world on: an earlier, larger layout's. */
void rank_files_trim(const char *dir, int world);

/* tools/plan_file.c: plan files read back; every field that is used is
   checked first. plan_read: NULL and why (naming the field) if the file
   cannot be read, is not a plan or holds a value out of range. */
const char *plan_path(const char *arg); /* ARG/plan.json for a directory, else ARG */
const Json *plan_read(const char *path, char *why, size_t n);
struct PipelinePlan *plan_pipeline_of(const Json *checked_plan);

/* tools/compare_html.c: carve compare's page: the side-by-side table (rows x
   (n + 1) cells: a label, then one per plan), the n lines on the fastest, and
   a section per plan. */
bool compare_html(const char *path, int n, const Json *const *plans, const char *const *paths, int rows,
                  const char *const *cells, const char *const *lines, FILE *err);

/* Prints "carve: error: ..." and a hint to use --help; returns 2. */
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool wants_help(int argc, char **argv);
/* An option's number within [lo, hi] (a whole number for opt_integer), or
   false after a usage message naming the option and the range. */
bool opt_number(const char *cmd, const char *opt, const char *v, double lo, double hi, double *out);
bool opt_integer(const char *cmd, const char *opt, const char *v, double lo, double hi, int64_t *out);
#endif
