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

/* Rank programs for DIR/rankN.prog as codegen_ranks makes them
   (rank_file_write is a RankSink), each written whole to a staged name
   beside its place (DIR/.rankN.prog.staged): DIR is made before the first;
   `arena` gets the largest arena of those written, nbufs .. nstep rank 0's
   sizes. Nothing is in place until rank_files_commit. */
typedef struct RankFiles {
  const char *dir;
  int written;
  int64_t arena;
  int nbufs, ninit, nstep;
} RankFiles;
bool rank_file_write(const Program *p, void *files);
/* With ok: the staged programs of ranks 0 .. world - 1 renamed into place,
   every other DIR/rankN.prog removed (an earlier, larger layout's), then
   DIR/plan.json's staged one (if plan) renamed into place last; else the
   staged files removed and what was in place left as it was (a failed or
   refused plan's programs never replace a good set). Whether ok and every
   rename worked (said on stderr). */
bool rank_files_commit(const char *dir, int world, bool plan, bool ok);
/* DIR/.plan.json.staged: where `carve plan -o` writes plan.json before rank_files_commit. */
const char *staged_plan(const char *dir);

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
