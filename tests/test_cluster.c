/* test_cluster.c: cluster files.
 *   - every shipped cluster loads, by name and by path, with its datasheet
 *     figures (dgx-a100: 8 devices per node, 312e12 bf16, ...);
 *   - units scale exactly (80GB is 80e9 bit for bit, 200Gb/s is 25e9);
 *   - resizing changes the counts, 0 keeps them, negatives are refused;
 *   - any device count works: a 3 x 6 cluster loads;
 *   - bad files (duplicate, unknown or missing key, garbage, negative or
 *     absurd value, wrong unit) give NULL and exactly the located messages,
 *     several per file. The files are written into a temporary directory. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../planner/planner.h"
#include "harness.h"

static char dir[] = "/tmp/carve-test-cluster-XXXXXX";
static int nfiles;

/* A valid 3 x 6 cluster; the line numbers matter to the expected messages. */
static const char *const base = "# a test cluster\n" /* line 1 */
                                "name t\n"
                                "device Test Device 1   # comment\n"
                                "nodes 3\n"
                                "devices_per_node 6\n" /* line 5 */
                                "flops_f32 1e12\n"
                                "flops_bf16 2e12\n"
                                "memory 16e9\n"
                                "mem_bandwidth 1e12\n"
                                "intra_bandwidth 100e9\n" /* line 10 */
                                "intra_latency 5e-6\n"
                                "inter_bandwidth 10e9\n"
                                "inter_latency 1e-5\n";

static char *write_cluster(const char *name, const char *text) {
  char *path = arena_printf("%s/%s.cluster", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) carve_fatal("cannot write %s", path);
  fputs(text, f);
  fclose(f);
  nfiles++;
  return path;
}

/* base with the line that starts with `from` replaced by `to` ("" deletes
 * it); from == NULL appends `to`. */
static char *edit(const char *from, const char *to) {
  if (!from) return arena_printf("%s%s", base, to);
  const char *at = strstr(base, from);
  CARVE_ASSERT(at, "the edit's line is in base");
  const char *end = strchr(at, '\n') + 1;
  return arena_printf("%.*s%s%s", (int)(at - base), base, to, end);
}

/* Loads path; returns the cluster and the messages in *msgs. */
static Cluster *load(const char *path, char **msgs) {
  size_t len;
  FILE *m = open_memstream(msgs, &len);
  Cluster *c = cluster_load(path, m);
  fclose(m);
  return c;
}

/* `tmpl` with every '@' replaced by path. */
static char *expand(const char *tmpl, const char *path) {
  char *out = arena_strdup("");
  for (const char *p = tmpl; *p; p++) out = *p == '@' ? arena_printf("%s%s", out, path) : arena_printf("%s%c", out, *p);
  return out;
}

static void check_shipped(void) {
  char *msgs;
  Cluster *a = load("dgx-a100", &msgs);
  CHECK(a && !*msgs, "dgx-a100 loads: %s", msgs);
  free(msgs);
  if (a) {
    CHECK(!strcmp(a->name, "dgx-a100") && !strcmp(a->device, "A100 SXM 80GB"), "%s / %s", a->name, a->device);
    CHECK(a->nodes == 1 && a->devices_per_node == 8 && cluster_devices(a) == 8, "%d x %d", a->nodes,
          a->devices_per_node);
    CHECK(a->flops_bf16 == 312e12 && a->flops_f32 == 19.5e12, "%g %g", a->flops_bf16, a->flops_f32);
    CHECK(a->memory == 80e9 && a->mem_bandwidth == 2039e9, "%g %g", a->memory, a->mem_bandwidth);
    CHECK(a->intra_bandwidth == 230e9 && a->inter_bandwidth == 25e9, "%g %g", a->intra_bandwidth, a->inter_bandwidth);
    CHECK(a->intra_latency > 0 && a->inter_latency >= a->intra_latency, "%g %g", a->intra_latency, a->inter_latency);
    size_t n = strlen(a->path);
    CHECK(n > 25 && !strcmp(a->path + n - 25, "clusters/dgx-a100.cluster"), "path %s", a->path);
    Cluster *b = load(a->path, &msgs);
    CHECK(b && b->flops_bf16 == 312e12, "dgx-a100 by path: %s", msgs);
    free(msgs);
  }
  Cluster *h = load("dgx-h100", &msgs);
  free(msgs);
  CHECK(h && h->devices_per_node == 8 && h->flops_bf16 == 989e12 && h->flops_f32 == 67e12 &&
            h->mem_bandwidth == 3350e9 && h->intra_bandwidth == 370e9 && h->inter_bandwidth == 50e9,
        "dgx-h100");
  Cluster *v = load("p3-16xlarge", &msgs);
  free(msgs);
  CHECK(v && v->devices_per_node == 8 && v->flops_bf16 == 125e12 && v->flops_f32 == 15.7e12 && v->memory == 16e9 &&
            v->mem_bandwidth == 900e9 && v->intra_bandwidth == 120e9 && v->inter_bandwidth == 25e9 / 8 / 8,
        "p3-16xlarge");
  Cluster *l = load("local", &msgs);
  free(msgs);
  CHECK(l && l->nodes == 1 && l->devices_per_node == 2 && l->flops_bf16 == 0 && l->flops_f32 == 100e9, "local");
}

static void check_resize(void) {
  char *msgs;
  size_t len;
  Cluster *c = load("dgx-a100", &msgs);
  free(msgs);
  if (!c) return;
  FILE *m = open_memstream(&msgs, &len);
  CHECK(cluster_resize(c, 64, 0, m) && cluster_devices(c) == 512 && c->devices_per_node == 8, "64 nodes");
  CHECK(cluster_resize(c, 0, 0, m) && cluster_devices(c) == 512, "0 keeps");
  CHECK(cluster_resize(c, 3, 6, m) && c->nodes == 3 && c->devices_per_node == 6, "3 x 6");
  CHECK(!cluster_resize(c, -1, 4, m) && c->nodes == 3 && c->devices_per_node == 6, "-1 nodes refused, nothing kept");
  CHECK(!cluster_resize(c, 0, -2, m), "-2 devices per node refused");
  CHECK(!cluster_resize(c, 2000000, 0, m), "2e6 nodes refused");
  fclose(m);
  CHECK(!strcmp(msgs, "error: nodes must be from 1 to 1000000 (0 keeps the file's value), got -1\n"
                      "error: devices per node must be from 1 to 1024 (0 keeps the file's value), got -2\n"
                      "error: nodes must be from 1 to 1000000 (0 keeps the file's value), got 2000000\n"),
        "resize messages:\n%s", msgs);
  free(msgs);
  m = open_memstream(&msgs, &len);
  cluster_print(c, m);
  fclose(m);
  CHECK(strstr(msgs, "18 devices = 3 nodes x 6 per node\n  device        A100 SXM 80GB\n") &&
            strstr(msgs, "312 TFLOP/s bf16"),
        "print:\n%s", msgs);
  free(msgs);
}

static void check_good_files(void) {
  char *msgs;
  Cluster *c = load(write_cluster("three-by-six", base), &msgs);
  CHECK(c && !*msgs, "3 x 6 loads: %s", msgs);
  free(msgs);
  if (c)
    CHECK(cluster_devices(c) == 18 && !strcmp(c->device, "Test Device 1") && c->inter_latency == 1e-5,
          "3 x 6: %d, '%s'", cluster_devices(c), c->device);
  const char *units = "name u\r\nnodes 1\r\ndevices_per_node 7\r\nflops_f32 19.5TFLOPS\r\nmemory 0.1GB\r\n"
                      "mem_bandwidth 64GiB/s\r\nintra_bandwidth 300 GB/s\r\nintra_latency 5us\r\n"
                      "inter_bandwidth 200Gb/s\r\ninter_latency 10us\r\n";
  c = load(write_cluster("units", units), &msgs);
  CHECK(c && !*msgs, "units load: %s", msgs);
  free(msgs);
  if (c)
    CHECK(c->flops_f32 == 19.5e12 && c->flops_bf16 == 0 && c->memory == 1e8 && c->mem_bandwidth == 64.0 * (1 << 30) &&
              c->intra_bandwidth == 300e9 && c->intra_latency == 5e-6 && c->inter_bandwidth == 25e9 &&
              c->inter_latency == 10e-6 && !strcmp(c->device, ""),
          "units: %.17g %.17g %.17g %.17g", c->memory, c->intra_latency, c->inter_bandwidth, c->inter_latency);
  setenv("CARVE_CLUSTERS", dir, 1);
  c = load("units", &msgs);
  CHECK(c && !strcmp(c->name, "u"), "found through $CARVE_CLUSTERS: %s", msgs);
  free(msgs);
  unsetenv("CARVE_CLUSTERS");
}

typedef struct Bad {
  const char *name, *from, *to;
  const char *msgs; /* '@' stands for the file's path */
} Bad;

static const Bad bads[] = {
    {"duplicate", NULL, "nodes 2\n", "@:14: error: duplicate key 'nodes' (first given on line 4)\n"},
    {"unknown", "nodes", "nodez 3\n",
     "@:4: error: unknown key 'nodez' (see docs/cluster-format.md for the keys)\n"
     "@: error: missing key 'nodes': number of nodes\n"},
    {"missing", "memory", "", "@: error: missing key 'memory': bytes of memory per device\n"},
    {"garbage", "memory", "memory lots\n",
     "@:8: error: memory: expected a number of bytes such as 80e9, 80GB or 64GiB, got 'lots'\n"},
    {"negative", "inter_latency", "inter_latency -1e-5\n",
     "@:13: error: inter_latency must be positive, got '-1e-5'\n"},
    {"zero", "flops_f32", "flops_f32 0\n", "@:6: error: flops_f32 must be positive, got '0'\n"},
    {"absurd", "nodes", "nodes 2000000\n", "@:4: error: nodes must be from 1 to 1000000, got '2000000'\n"},
    {"fraction", "devices_per_node", "devices_per_node 2.5\n",
     "@:5: error: devices_per_node must be a whole number, got '2.5'\n"},
    {"with_unit", "nodes", "nodes 3 nodes\n", "@:4: error: nodes: expected a whole number, got '3 nodes'\n"},
    {"wrong_unit", "memory", "memory 80GB/s\n",
     "@:8: error: memory: 'GB/s' is not a unit of bytes; write e.g. 80e9, 80GB or 64GiB\n"},
    {"tiny", "intra_latency", "intra_latency 5\n",
     "@:11: error: intra_latency must be from 1e-09 to 1 seconds, got '5'\n"},
    {"no_value", "flops_bf16", "flops_bf16\n",
     "@:7: error: 'flops_bf16' needs a value: peak FLOP/s per device at bf16\n"},
    {"name", "name", "name dgx a100\n",
     "@:2: error: name is one word of letters, digits, '-', '_' and '.', got 'dgx a100'\n"},
    {"workspace", NULL, "workspace 16GB\n",
     "@:14: error: workspace (1.6e+10 bytes) must be less than memory (1.6e+10 bytes)\n"},
};

static void check_bad_files(void) {
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
    const Bad *b = &bads[i];
    char *path = write_cluster(b->name, edit(b->from, b->to)), *msgs;
    Cluster *c = load(path, &msgs);
    char *want = expand(b->msgs, path);
    CHECK(!c && !strcmp(msgs, want), "%s:\nwant:\n%sgot:\n%s", b->name, want, msgs);
    free(msgs);
  }
  /* several errors in one file, in line order, then the missing keys */
  const char *text = "name x\nnodes -1\nnodes 2\nwidth 3\nmemory 1e9\nmemory_bandwidth 1e12\n";
  char *path = write_cluster("several", text), *msgs;
  Cluster *c = load(path, &msgs);
  char *want = expand("@:2: error: nodes must be positive, got '-1'\n"
                      "@:3: error: duplicate key 'nodes' (first given on line 2)\n"
                      "@:4: error: unknown key 'width' (see docs/cluster-format.md for the keys)\n"
                      "@:6: error: unknown key 'memory_bandwidth' (see docs/cluster-format.md for the keys)\n"
                      "@: error: missing key 'devices_per_node': devices in each node\n"
                      "@: error: missing key 'flops_f32': peak FLOP/s per device at f32\n"
                      "@: error: missing key 'mem_bandwidth': memory bandwidth per device, bytes/s\n"
                      "@: error: missing key 'intra_bandwidth': bytes/s per device, one direction, inside a node\n"
                      "@: error: missing key 'intra_latency': seconds per message inside a node\n"
                      "@: error: missing key 'inter_bandwidth': bytes/s per device, one direction, across nodes\n"
                      "@: error: missing key 'inter_latency': seconds per message across nodes\n",
                      path);
  CHECK(!c && !strcmp(msgs, want), "several:\nwant:\n%sgot:\n%s", want, msgs);
  free(msgs);
  c = load("nosuch", &msgs);
  CHECK(!c && strstr(msgs, "error: unknown cluster 'nosuch'") && strstr(msgs, " dgx-a100 dgx-h100 local p3-16xlarge"),
        "unknown name:\n%s", msgs);
  free(msgs);
  c = load("/nonexistent/x.cluster", &msgs);
  CHECK(!c && !strcmp(msgs, "/nonexistent/x.cluster: error: cannot read the cluster: No such file or directory\n"),
        "missing path:\n%s", msgs);
  free(msgs);
}

/* Removes the temporary files (their names are the cases above). */
static void clean_up(void) {
  const char *names[] = {"three-by-six", "units", "several"};
  for (size_t i = 0; i < 3; i++) unlink(arena_printf("%s/%s.cluster", dir, names[i]));
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) unlink(arena_printf("%s/%s.cluster", dir, bads[i].name));
  if (rmdir(dir)) fprintf(stderr, "test_cluster: %s left behind (%d files written)\n", dir, nfiles);
}

int main(void) {
  if (!mkdtemp(dir)) carve_fatal("mkdtemp %s", dir);
  check_shipped();
  check_resize();
  check_good_files();
  check_bad_files();
  clean_up();
  return test_summary();
}
