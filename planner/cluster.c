/* cluster.c: the machines carve plans for. A cluster file (format in
 * docs/cluster-format.md) gives one `key value` per line: nodes, devices per
 * node, each device's peak FLOP/s, memory and memory bandwidth, and the
 * bandwidth and latency of the links inside a node and across nodes.
 *
 * Loading resolves a shipped name (NAME.cluster in $CARVE_CLUSTERS, in the
 * source tree's clusters/, in ./clusters) or takes a path, reads every line,
 * reports each bad line as "path:LINE: error: ..." and each missing key as
 * "path: error: ...", and returns NULL if anything was wrong. Numbers take
 * optional unit suffixes (80GB, 312TFLOPS, 200Gb/s, 5us); the scaling is done
 * on the decimal text, so "80GB" is bit for bit the same double as "80e9". */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "planner.h"

#ifndef CARVE_CLUSTERS_DIR
#define CARVE_CLUSTERS_DIR "clusters"
#endif

#define MAX_NODES 1000000
#define MAX_DEVICES_PER_NODE 1024 /* MAX_NODES x this still fits an int */
#define MAX_ERRORS 20
#define MAX_VALUE 200 /* bytes of one value */

/* What a key's value is: it decides the accepted units and the field type. */
typedef enum { V_NAME, V_TEXT, V_COUNT, V_FLOPS, V_BYTES, V_RATE, V_SECONDS, V_FRACTION } ValueKind;

typedef struct Key {
  const char *name;
  ValueKind kind;
  size_t offset;    /* of the field in Cluster */
  double lo, hi;    /* accepted range */
  bool optional;    /* may be absent (and, for numbers, 0) */
  const char *what; /* for "missing key" messages */
} Key;

#define F(field) offsetof(Cluster, field)
static const Key keys[] = {
    {"name", V_NAME, F(name), 0, 0, false, "the cluster's name, one word"},
    {"device", V_TEXT, F(device), 0, 0, true, "the device, free text"},
    {"nodes", V_COUNT, F(nodes), 1, MAX_NODES, false, "number of nodes"},
    {"devices_per_node", V_COUNT, F(devices_per_node), 1, MAX_DEVICES_PER_NODE, false, "devices in each node"},
    {"flops_f32", V_FLOPS, F(flops_f32), 1e6, 1e17, false, "peak FLOP/s per device at f32"},
    {"flops_bf16", V_FLOPS, F(flops_bf16), 1e6, 1e17, true, "peak FLOP/s per device at bf16"},
    {"flops_vector", V_FLOPS, F(flops_vector), 1e6, 1e17, true, "FLOP/s of elementwise math per device"},
    {"memory", V_BYTES, F(memory), 1e6, 1e14, false, "bytes of memory per device"},
    {"mem_bandwidth", V_RATE, F(mem_bandwidth), 1e6, 1e14, false, "memory bandwidth per device, bytes/s"},
    {"flops_vector_bf16", V_FLOPS, F(flops_vector_bf16), 1e6, 1e17, true,
     "FLOP/s of elementwise math on bf16 data per device"},
    {"mem_bandwidth_bf16", V_RATE, F(mem_bandwidth_bf16), 1e6, 1e14, true,
     "bytes/s of elementwise ops on bf16 data per device"},
    {"workspace", V_BYTES, F(workspace), 1e3, 1e14, true,
     "bytes per device the runtime holds besides the program's buffers"},
    {"intra_bandwidth", V_RATE, F(intra_bandwidth), 1e6, 1e14, false,
     "bytes/s per device, one direction, inside a node"},
    {"intra_latency", V_SECONDS, F(intra_latency), 1e-9, 1, false, "seconds per message inside a node"},
    {"inter_bandwidth", V_RATE, F(inter_bandwidth), 1e6, 1e14, false,
     "bytes/s per device, one direction, across nodes"},
    {"inter_latency", V_SECONDS, F(inter_latency), 1e-9, 1, false, "seconds per message across nodes"},
    {"gemm_efficiency", V_FRACTION, F(gemm_efficiency), 0.01, 1, true,
     "fraction of the 16-bit peak a large square matrix product reaches"},
    {"gemm_efficiency_f32", V_FRACTION, F(gemm_efficiency_f32), 0.01, 1, true,
     "fraction of the f32 peak a large square matrix product reaches"},
    {"gemm_half_dim", V_FRACTION, F(gemm_half_dim), 0.01, 1e6, true,
     "a matrix product dim at which the product runs at half its large-product efficiency"},
    {"best_mfu", V_FRACTION, F(best_mfu), 0.01, 1, true, "best published MFU of the device in training"},
    {"overlap_cost", V_FRACTION, F(overlap_cost), 0.01, 1, true,
     "fraction of the time of communication run beside compute that the compute loses"},
    {"pass_bandwidth", V_RATE, F(pass_bandwidth), 1e6, 1e14, true,
     "bytes/s per device of the per-parameter passes (gradient accumulation, optimizer update)"},
};
#undef F
#define NKEYS ((int)(sizeof keys / sizeof keys[0]))

static const char *const unit_words[] = {[V_FRACTION] = "(no unit)",
                                         [V_FLOPS] = "FLOP/s",
                                         [V_BYTES] = "bytes",
                                         [V_RATE] = "bytes/s",
                                         [V_SECONDS] = "seconds"};
static const char *const unit_examples[] = {[V_FRACTION] = "0.8",
                                            [V_FLOPS] = "312e12 or 312TFLOPS",
                                            [V_BYTES] = "80e9, 80GB or 64GiB",
                                            [V_RATE] = "25e9, 25GB/s or 200Gb/s",
                                            [V_SECONDS] = "5e-6 or 5us"};

typedef struct Parser {
  const char *path;
  FILE *err;
  int errors;
  int line_of[NKEYS]; /* where each key was given; 0: not yet */
  Cluster *c;
} Parser;

static void error_at(Parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void error_at(Parser *p, int line, const char *fmt, ...) {
  if (++p->errors > MAX_ERRORS) return;
  va_list ap;
  va_start(ap, fmt);
  if (line)
    fprintf(p->err, "%s:%d: error: ", p->path, line);
  else
    fprintf(p->err, "%s: error: ", p->path);
  vfprintf(p->err, fmt, ap);
  fputc('\n', p->err);
  va_end(ap);
  if (p->errors == MAX_ERRORS) fprintf(p->err, "too many errors; stopping here\n");
}

/* ---------------------------------------------------------------- numbers */

/* Scans [+-]digits[.digits][(e|E)[+-]digits] at s. Returns its length (0:
 * not a number); *mant is the length before the exponent, *exp its value. */
static size_t scan_number(const char *s, size_t *mant, long *exp) {
  size_t i = (s[0] == '+' || s[0] == '-'), digits = 0;
  while (isdigit((unsigned char)s[i])) i++, digits++;
  if (s[i] == '.')
    for (i++; isdigit((unsigned char)s[i]); i++) digits++;
  if (!digits) return 0;
  *mant = i;
  *exp = 0;
  size_t j = i + 1 + (s[i + 1] == '+' || s[i + 1] == '-');
  if ((s[i] != 'e' && s[i] != 'E') || !isdigit((unsigned char)s[j])) return i;
  for (; isdigit((unsigned char)s[j]); j++)
    if (*exp < 100000) *exp = *exp * 10 + (s[j] - '0');
  if (s[i + 1] == '-') *exp = -*exp;
  return j;
}

typedef struct Prefix {
  const char *s;
  int exp10, exp2;
} Prefix;

static const Prefix prefixes[] = {{"", 0, 0},    {"k", 3, 0},   {"K", 3, 0},   {"M", 6, 0},   {"G", 9, 0},
                                  {"T", 12, 0},  {"P", 15, 0},  {"Ki", 0, 10}, {"Mi", 0, 20}, {"Gi", 0, 30},
                                  {"Ti", 0, 40}, {"Pi", 0, 50}, {"m", -3, 0},  {"u", -6, 0},  {"n", -9, 0}};

static bool prefix_allowed(const Prefix *pf, ValueKind kind) {
  if (pf->exp10 < 0) return kind == V_SECONDS;
  if (pf->exp2) return kind == V_BYTES || kind == V_RATE;
  return kind != V_SECONDS || !pf->s[0];
}

/* Matches a unit suffix of `kind`: sets the decimal exponent, the power of
 * two and whether the unit counts bits. No suffix: leaves them as they are. */
static bool match_unit(const char *u, ValueKind kind, int *exp10, int *exp2, bool *bits) {
  static const char *const bases[][3] = {
      [V_FLOPS] = {"FLOPS", "FLOP/s"}, [V_BYTES] = {"B"}, [V_RATE] = {"B/s", "b/s"}, [V_SECONDS] = {"s"}};
  if (!*u) return true;
  for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
    const Prefix *pf = &prefixes[i];
    size_t n = strlen(pf->s);
    if (!prefix_allowed(pf, kind) || strncmp(u, pf->s, n)) continue;
    for (int b = 0; b < 3 && bases[kind][b]; b++)
      if (!strcmp(u + n, bases[kind][b])) {
        *exp10 = pf->exp10;
        *exp2 = pf->exp2;
        *bits = bases[kind][b][0] == 'b';
        return true;
      }
  }
  return false;
}

/* Parses a number with an optional unit of `kind` (V_COUNT: none). The
 * decimal scaling goes into the exponent of the text before strtod, so the
 * result is the correctly rounded value of what was written. */
static bool parse_value(Parser *p, int line, const Key *k, const char *v, double *out) {
  size_t mant;
  long exp;
  size_t n = scan_number(v, &mant, &exp);
  const char *u = v + n;
  while (n && (*u == ' ' || *u == '\t')) u++;
  bool plain = k->kind == V_COUNT || k->kind == V_FRACTION; /* no unit */
  if (!n || (plain && *u)) {
    if (k->kind == V_COUNT)
      error_at(p, line, "%s: expected a whole number, got '%s'", k->name, v);
    else if (k->kind == V_FRACTION)
      error_at(p, line, "%s: expected a number without a unit such as 0.8, got '%s'", k->name, v);
    else
      error_at(p, line, "%s: expected a number of %s such as %s, got '%s'", k->name, unit_words[k->kind],
               unit_examples[k->kind], v);
    return false;
  }
  int exp10 = 0, exp2 = 0;
  bool bits = false;
  if (!plain && !match_unit(u, k->kind, &exp10, &exp2, &bits)) {
    error_at(p, line, "%s: '%s' is not a unit of %s; write e.g. %s", k->name, u, unit_words[k->kind],
             unit_examples[k->kind]);
    return false;
  }
  double x = strtod(arena_printf("%.*se%ld", (int)mant, v, exp + exp10), NULL);
  x = ldexp(x, exp2 - (bits ? 3 : 0));
  if (!isfinite(x)) {
    error_at(p, line, "%s: '%s' is out of range", k->name, v);
    return false;
  }
  *out = x;
  return true;
}

/* Range checks: positive, then within the key's bounds. */
static bool check_range(Parser *p, int line, const Key *k, const char *v, double x) {
  if (x == 0 && k->optional) return true;
  if (x <= 0) {
    error_at(p, line, "%s must be positive, got '%s'", k->name, v);
    return false;
  }
  if (k->kind == V_COUNT && x != floor(x)) {
    error_at(p, line, "%s must be a whole number, got '%s'", k->name, v);
    return false;
  }
  if (x < k->lo || x > k->hi) {
    if (k->kind == V_COUNT)
      error_at(p, line, "%s must be from %.0f to %.0f, got '%s'", k->name, k->lo, k->hi, v);
    else
      error_at(p, line, "%s must be from %g to %g %s, got '%s'", k->name, k->lo, k->hi, unit_words[k->kind], v);
    return false;
  }
  return true;
}

/* ------------------------------------------------------------------ lines */

static bool name_ok(const char *s) {
  for (const char *q = s; *q; q++)
    if (!isalnum((unsigned char)*q) && !strchr("-_.", *q)) return false;
  return *s != 0;
}

/* A value is short printable text: so every message that quotes one is
 * short, and a device name cannot move the terminal's cursor. */
static bool value_ok(Parser *p, int line, const Key *k, const char *v) {
  size_t n = strlen(v);
  if (n > MAX_VALUE) {
    error_at(p, line, "%s: the value is %zu bytes long; at most %d", k->name, n, MAX_VALUE);
    return false;
  }
  for (const char *q = v; *q; q++)
    if ((unsigned char)*q < 0x20 || *q == 0x7f) {
      error_at(p, line, "%s: the value holds a control character (byte 0x%02x)", k->name, (unsigned char)*q);
      return false;
    }
  return true;
}

static void set_value(Parser *p, int line, const Key *k, const char *v) {
  char *field = (char *)p->c + k->offset;
  if (!value_ok(p, line, k, v)) return;
  if (k->kind == V_NAME || k->kind == V_TEXT) {
    if (k->kind == V_NAME && !name_ok(v))
      error_at(p, line, "name is one word of letters, digits, '-', '_' and '.', got '%s'", v);
    else
      *(const char **)field = arena_strdup(v);
    return;
  }
  double x;
  if (!parse_value(p, line, k, v, &x) || !check_range(p, line, k, v, x)) return;
  if (k->kind == V_COUNT)
    *(int *)field = (int)x;
  else
    *(double *)field = x;
}

static int find_key(const char *name) {
  for (int i = 0; i < NKEYS; i++)
    if (!strcmp(keys[i].name, name)) return i;
  return -1;
}

/* One line, its comment already cut and its ends trimmed. */
static void parse_line(Parser *p, int line, char *s) {
  char *v = s;
  while (*v && !isspace((unsigned char)*v)) v++;
  if (*v) *v++ = 0;
  while (isspace((unsigned char)*v)) v++;
  int i = find_key(s);
  if (i < 0) {
    error_at(p, line, "unknown key '%.40s' (see docs/cluster-format.md for the keys)", s);
    return;
  }
  if (p->line_of[i]) {
    error_at(p, line, "duplicate key '%s' (first given on line %d)", s, p->line_of[i]);
    return;
  }
  p->line_of[i] = line;
  if (!*v)
    error_at(p, line, "'%s' needs a value: %s", s, keys[i].what);
  else
    set_value(p, line, &keys[i], v);
}

/* Cuts the line at '#', trims both ends in place. */
static char *trim_line(char *s) {
  char *hash = strchr(s, '#');
  if (hash) *hash = 0;
  while (isspace((unsigned char)*s)) s++;
  size_t n = strlen(s);
  while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
  return s;
}

static void check_missing(Parser *p) {
  for (int i = 0; i < NKEYS; i++)
    if (!p->line_of[i] && !keys[i].optional) error_at(p, 0, "missing key '%s': %s", keys[i].name, keys[i].what);
  for (int i = 0; i < NKEYS; i++) /* the workspace is taken out of the memory: some must be left */
    if (!strcmp(keys[i].name, "workspace") && p->line_of[i] && p->c->memory > 0 && p->c->workspace >= p->c->memory)
      error_at(p, p->line_of[i], "workspace (%g bytes) must be less than memory (%g bytes)", p->c->workspace,
               p->c->memory);
}

/* Parses text in place: each line is cut out of it, nothing is copied. */
static Cluster *parse_cluster(const char *path, char *text, size_t len, FILE *err) {
  Parser p = {.path = path, .err = err, .c = arena_alloc(sizeof(Cluster))};
  memset(p.c, 0, sizeof *p.c);
  p.c->path = arena_strdup(path);
  p.c->device = "";
  if (memchr(text, 0, len)) {
    error_at(&p, 0, "not a text file (it holds a NUL byte)");
    return NULL;
  }
  int line = 0;
  for (char *s = text; s < text + len; line++) {
    char *e = memchr(s, '\n', (size_t)(text + len - s));
    if (!e) e = text + len;
    *e = 0; /* text[len] is 0 too */
    char *l = trim_line(s);
    if (*l) parse_line(&p, line + 1, l);
    s = e + 1;
  }
  check_missing(&p);
  return p.errors ? NULL : p.c;
}

/* ------------------------------------------------------------- resolution */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The search path for a name: $CARVE_CLUSTERS, the source tree, ./clusters. */
static int search_dirs(const char **dirs) {
  int n = 0;
  const char *env = getenv("CARVE_CLUSTERS");
  if (env && *env) dirs[n++] = env;
  dirs[n++] = CARVE_CLUSTERS_DIR;
  dirs[n++] = "./clusters";
  return n;
}

/* Every NAME.cluster in the search path, sorted, each name once. */
static void list_shipped(FILE *err) {
  const char *dirs[3];
  int nd = search_dirs(dirs), n = 0, cap = 16;
  char **names = xmalloc((size_t)cap * sizeof *names);
  for (int i = 0; i < nd; i++) {
    DIR *d = opendir(dirs[i]);
    for (struct dirent *e; d && (e = readdir(d));) {
      size_t len = strlen(e->d_name);
      if (len <= 8 || strcmp(e->d_name + len - 8, ".cluster")) continue;
      if (n == cap) names = xrealloc(names, (size_t)(cap *= 2) * sizeof *names);
      names[n++] = arena_strndup(e->d_name, len - 8);
    }
    if (d) closedir(d);
  }
  qsort(names, (size_t)n, sizeof *names, cmp_str);
  fprintf(err, "the known clusters:");
  for (int i = 0; i < n; i++)
    if (!i || strcmp(names[i], names[i - 1])) fprintf(err, " %s", names[i]);
  fprintf(err, n ? "\n" : " none\n");
  free(names);
}

/* An existing file is used as it is; a bare NAME becomes NAME.cluster in the
 * first search directory that has it. NULL (and a message) if none does. */
static const char *resolve(const char *arg, FILE *err) {
  struct stat st;
  if (stat(arg, &st) == 0 || strchr(arg, '/')) return arg;
  const char *dirs[3];
  int nd = search_dirs(dirs);
  size_t len = strlen(arg);
  bool has_ext = len > 8 && !strcmp(arg + len - 8, ".cluster");
  for (int i = 0; i < nd; i++) {
    const char *p = arena_printf("%s/%s%s", dirs[i], arg, has_ext ? "" : ".cluster");
    if (stat(p, &st) == 0) return p;
  }
  fprintf(err, "error: unknown cluster '%s': no such file, and no %s%s in", arg, arg, has_ext ? "" : ".cluster");
  for (int i = 0; i < nd; i++) fprintf(err, "%s %s", i ? (i == nd - 1 ? " or" : ",") : "", dirs[i]);
  fprintf(err, "\n");
  list_shipped(err);
  return NULL;
}

Cluster *cluster_load(const char *name_or_path, FILE *err) {
  const char *path = resolve(name_or_path, err);
  if (!path) return NULL;
  size_t len;
  char why[128];
  char *text = read_file_limit(path, LIMIT_TEXT, &len, why, sizeof why);
  if (!text) {
    fprintf(err, "%s: error: cannot read the cluster: %s\n", path, why);
    return NULL;
  }
  Cluster *c = parse_cluster(path, text, len, err);
  free(text);
  return c;
}

/* --------------------------------------------------------- resize, print */

static bool check_count(const char *what, int v, int hi, FILE *err) {
  if (v >= 0 && v <= hi) return true;
  fprintf(err, "error: %s must be from 1 to %d (0 keeps the file's value), got %d\n", what, hi, v);
  return false;
}

bool cluster_resize(Cluster *c, int nodes, int devices_per_node, FILE *err) {
  bool ok = check_count("nodes", nodes, MAX_NODES, err);
  ok = check_count("devices per node", devices_per_node, MAX_DEVICES_PER_NODE, err) && ok;
  if (!ok) return false;
  if (nodes) c->nodes = nodes;
  if (devices_per_node) c->devices_per_node = devices_per_node;
  return true;
}

int cluster_devices(const Cluster *c) { return c->nodes * c->devices_per_node; }

/* 19.5 T, 2.039 T, 300 G: four significant digits, SI prefix. */
static const char *si(double v, const char *unit) {
  static const char *const pre[] = {"", "K", "M", "G", "T", "P", "E"};
  int i = 0;
  while (v >= 1000 && i < 6) v /= 1000, i++;
  return arena_printf("%.4g %s%s", v, pre[i], unit);
}

static const char *seconds(double s) {
  if (s < 1e-6) return arena_printf("%.4g ns", s * 1e9);
  if (s < 1e-3) return arena_printf("%.4g us", s * 1e6);
  if (s < 1) return arena_printf("%.4g ms", s * 1e3);
  return arena_printf("%.4g s", s);
}

static const char *peaks(double f32, double bf16) {
  if (!bf16) return arena_printf("%s f32, no bf16", si(f32, "FLOP/s"));
  return arena_printf("%s f32, %s bf16", si(f32, "FLOP/s"), si(bf16, "FLOP/s"));
}

void cluster_print(const Cluster *c, FILE *out) {
  int n = cluster_devices(c);
  fprintf(out, "cluster %s (%s)\n", c->name, c->path);
  fprintf(out, "  size          %d devices = %d node%s x %d per node\n", n, c->nodes, c->nodes == 1 ? "" : "s",
          c->devices_per_node);
  fprintf(out, "  device        %s\n", *c->device ? c->device : "(not named)");
  fprintf(out, "  per device    %s; %s memory at %s\n", peaks(c->flops_f32, c->flops_bf16), si(c->memory, "B"),
          si(c->mem_bandwidth, "B/s"));
  if (c->flops_vector > 0) fprintf(out, "  elementwise   %s\n", si(c->flops_vector, "FLOP/s"));
  fprintf(out, "  inside node   %s per device each way, latency %s%s\n", si(c->intra_bandwidth, "B/s"),
          seconds(c->intra_latency), c->devices_per_node == 1 ? " (unused: one device per node)" : "");
  fprintf(out, "  across nodes  %s per device each way, latency %s%s\n", si(c->inter_bandwidth, "B/s"),
          seconds(c->inter_latency), c->nodes == 1 ? " (unused: one node)" : "");
  fprintf(out, "  aggregate     %s; %s memory\n", peaks(n * c->flops_f32, n * c->flops_bf16), si(n * c->memory, "B"));
}
