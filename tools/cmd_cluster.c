/* cmd_cluster.c: `carve cluster NAME|PATH [--nodes N] [--devices-per-node N]`
 * loads a cluster file (a shipped name or a path), checks every line,
 * optionally changes its size, and prints the machine it describes.
 * Exit status: 0 fine, 1 a bad cluster file, 2 a bad command line. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../planner/planner.h"
#include "tools.h"

static void cluster_help(void) {
  printf("usage: carve cluster NAME|PATH [--nodes N] [--devices-per-node N]\n\n"
         "Checks a cluster file and prints the machine it describes: device count, per-device\n"
         "peak FLOP/s, memory, the links inside a node and across nodes, and the aggregate peak.\n"
         "NAME is a shipped cluster (clusters/NAME.cluster; $CARVE_CLUSTERS is searched first),\n"
         "PATH any cluster file (format: docs/cluster-format.md).\n"
         "  --nodes N             use N nodes instead of the file's count\n"
         "  --devices-per-node N  use N devices in each node instead of the file's count\n"
         "Any positive counts work; nothing assumes powers of two.\n"
         "example: carve cluster dgx-a100 --nodes 64\n");
}

/* A whole number from 1 to hi for option `opt`; false after a usage message.
 * (The bounds are cluster_resize's, which checks them again.) */
static bool count_arg(const char *opt, const char *v, long hi, int *out) {
  char *end;
  errno = 0;
  long x = v ? strtol(v, &end, 10) : 0;
  if (!v || end == v || *end || errno || x < 1 || x > hi) {
    usage_error("cluster", "%s expects a whole number from 1 to %ld, got '%s'", opt, hi, v ? v : "");
    return false;
  }
  *out = (int)x;
  return true;
}

/* Takes "--opt N" and "--opt=N"; *i moves past the value. */
static bool option(int argc, char **argv, int *i, int *nodes, int *per_node) {
  const char *a = argv[*i], *eq = strchr(a, '=');
  size_t n = eq ? (size_t)(eq - a) : strlen(a);
  const char *v = eq ? eq + 1 : (*i + 1 < argc ? argv[++*i] : NULL);
  if (n == 7 && !strncmp(a, "--nodes", n)) return count_arg("--nodes", v, 1000000, nodes);
  if (n == 18 && !strncmp(a, "--devices-per-node", n)) return count_arg("--devices-per-node", v, 1024, per_node);
  usage_error("cluster", "unknown option '%.*s'", (int)n, a);
  return false;
}

int cmd_cluster(int argc, char **argv) {
  if (wants_help(argc, argv)) {
    cluster_help();
    return 0;
  }
  const char *name = NULL;
  int nodes = 0, per_node = 0;
  for (int i = 1; i < argc; i++) {
    if (argv[i][0] == '-' && argv[i][1]) {
      if (!option(argc, argv, &i, &nodes, &per_node)) return 2;
    } else if (name) {
      return usage_error("cluster", "unexpected argument '%s': give one cluster", argv[i]);
    } else {
      name = argv[i];
    }
  }
  if (!name) return usage_error("cluster", "which cluster? give a name (e.g. dgx-a100) or a path");
  Cluster *c = cluster_load(name, stderr);
  if (!c) return 1;
  if (!cluster_resize(c, nodes, per_node, stderr)) return 2;
  cluster_print(c, stdout);
  return 0;
}
