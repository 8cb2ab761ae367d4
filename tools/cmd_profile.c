/* cmd_profile.c: `carve profile [-o FILE] [--quick]` measures this machine's
 * backend, running the runtime's own instructions through it: the matrix
 * product rate in f32 and in bf16, the memory bandwidth of an elementwise op,
 * the rate of the per-parameter passes (gradient accumulation and the
 * optimizer update), the rate of elementwise math and, with several ranks (mpirun -np N carve profile), the all-reduce
 * and point-to-point latency and bandwidth through the Transport, and what an all-reduce run on a second thread costs
 * the products beside it (the runtime overlaps communication so). Every rank runs every measurement at the same time,
 * as in training, and a figure is the slowest rank's, so it is what one rank gets while the others work too. Rank 0
 * prints a table and, with -o, writes a cluster file (docs/cluster-format.md) that carve plan --cluster FILE takes.
 * Exit status: 0 fine, 1 the file could not be written, 2 a bad command line. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../planner/planner.h"
#include "../runtime/backend.h"
#include "kmath.h"
#include "tools.h"

/* What a one-rank run writes for the links, which it cannot measure: the
 * figures of clusters/local.cluster. */
#define LOCAL_LINK_BANDWIDTH 5e9
#define LOCAL_LINK_LATENCY 5e-6

#define MAX_SIZES 8
#define MEM_FLOATS ((int64_t)16 << 20) /* 64 MiB per array */

static void profile_help(void) {
  printf("usage: carve profile [-o FILE] [--quick]\n\n"
         "Measures this machine's backend and prints what it found: the matrix product rate (f32 and\n"
         "bf16 einsums) on square matrices up to 2048, the memory bandwidth of an elementwise op (y += x on 64 MiB "
         "arrays), the rate of\n"
         "the per-parameter passes (acc, sumsq, adamw, cast) and,\n"
         "when started with several ranks (mpirun -np N carve profile), the all-reduce latency and bus\n"
         "bandwidth over all ranks and the point-to-point latency and bandwidth between ranks 0 and 1.\n"
         "Every rank runs every measurement at once, as in training: a figure is what one rank gets\n"
         "while the others work too.\n"
         "  -o FILE   write the figures as a cluster file (docs/cluster-format.md) for --cluster FILE\n"
         "  --quick   fewer sizes and repetitions: a few seconds, noisier figures\n"
         "example: mpirun -np 2 carve profile -o here.cluster && carve plan mlp --cluster here.cluster\n");
}

typedef struct Opts {
  const char *out;
  bool quick;
} Opts;

/* NULL, or what is wrong with the command line. */
static const char *parse_args(int argc, char **argv, Opts *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--quick")) {
      o->quick = true;
    } else if (!strcmp(a, "-o")) {
      if (++i >= argc || !argv[i][0]) return "-o needs a file to write the cluster to";
      o->out = argv[i];
    } else if (a[0] == '-') {
      return arena_printf("unknown option '%s'", a);
    } else {
      return arena_printf("unexpected argument '%s': carve profile takes options only", a);
    }
  }
  return NULL;
}

/* Whether `path` can be written, checked before measuring anything: opens
 * it for appending (which changes nothing) and removes it if it is new. */
static bool can_write(const char *path) {
  struct stat st;
  bool existed = stat(path, &st) == 0;
  FILE *f = fopen(path, "a");
  if (!f) return false;
  fclose(f);
  if (!existed) remove(path);
  return true;
}

/* ------------------------------------------------------------ measuring */

typedef enum { B_COMPUTE, B_ALL_REDUCE, B_PING_PONG } BenchKind;

/* A compute measurement is a program of a few step instructions over its
 * own buffers, loaded into the backend as any program is. */
enum { PROBE_BUFS = 8, PROBE_STEPS = 5 };
typedef struct Probe {
  Program p;
  Buffer bufs[PROBE_BUFS];
  Instr step[PROBE_STEPS];
  int nfill; /* buffers 0 .. nfill - 1 start with small values, the others with zeros */
  Backend *be;
} Probe;

typedef struct Bench {
  BenchKind kind;
  int64_t n; /* floats (all-reduce); bytes (ping-pong) */
  float *a;
  Probe *probe;
} Bench;

/* Buffers a, b, c, ... of the given shapes and dtypes, one after another,
   the first nfill of them filled with small values when loaded. */
static Probe *probe_make(int n, const DType *dts, const Shape *const *shapes, int nfill) {
  static const char *const names[PROBE_BUFS] = {"a", "b", "c", "d", "e", "f", "g", "h"};
  Probe *q = xcalloc(1, sizeof(Probe));
  int64_t off = 0;
  bool bf16 = false;
  for (int k = 0; k < n; k++) {
    int64_t bytes = shape_numel(shapes[k]) * dtype_size(dts[k]);
    q->bufs[k] = (Buffer){
        .name = names[k], .dtype = dts[k], .shape = *shapes[k], .kind = BUF_ACT, .offset = off, .bytes = bytes};
    off += (bytes + 63) / 64 * 64;
    bf16 |= dts[k] == DT_BF16;
  }
  q->nfill = nfill;
  q->p = (Program){.model = "profile",
                   .world = 1,
                   .precision = bf16 ? PREC_BF16 : PREC_FP32,
                   .bufs = q->bufs,
                   .nbufs = n,
                   .arena_bytes = off,
                   .step = q->step};
  return q;
}

/* Buffers a, b, c of the given shapes and dtype; a and b filled. */
static Probe *probe_new(DType dt, const Shape *sa, const Shape *sb, const Shape *sc) {
  const DType dts[3] = {dt, dt, dt};
  const Shape *const shapes[3] = {sa, sb, sc};
  return probe_make(3, dts, shapes, 2);
}

/* Loads the probe's instructions and fills a and b with small values. */
static void probe_load(Probe *q) {
  char why[256];
  q->be = backend_open(NULL, why, sizeof why);
  if (!q->be || !program_verify(&q->p, stderr) || !q->be->load(q->be, &q->p, stderr))
    carve_fatal("profile: the backend cannot run its own measurement (%s)", q->be ? "see above" : why);
  for (int k = 0; k < q->p.nbufs; k++) {
    int64_t n = shape_numel(&q->bufs[k].shape);
    float *x = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) x[i] = k < q->nfill ? 1e-2f * (float)(i % 7 - 3) : 0;
    if (q->bufs[k].dtype == DT_BF16)
      for (int64_t i = 0; i < n; i++) ((uint16_t *)x)[i] = km_bf16(x[i]);
    q->be->upload(q->be, q->bufs[k].offset, x, q->bufs[k].bytes);
    free(x);
  }
}

static void probe_free(Probe *q) {
  if (q->be) q->be->close(q->be);
  free(q);
}

static void probe_run(Probe *q) {
  StepInfo si = {.step = 1};
  for (int i = 0; i < q->p.nstep; i++) q->be->exec(q->be, &q->step[i], i, false, &si);
  StepStatus st;
  q->be->synchronize(q->be, &st);
}

/* One operation on this rank. The ping-pong involves ranks 0 and 1 only. */
static bool bench_once(Transport *t, const Bench *b) {
  switch (b->kind) {
  case B_COMPUTE: probe_run(b->probe); return true;
  case B_ALL_REDUCE: return t->all_reduce(t, 0, b->a, b->n, DT_F32);
  case B_PING_PONG:
    if (t->rank == 0) return t->send(t, b->a, b->n, 1, 1) && t->recv(t, b->a, b->n, 1, 2);
    if (t->rank == 1) return t->recv(t, b->a, b->n, 0, 1) && t->send(t, b->a, b->n, 0, 2);
    return true;
  }
  return false;
}

static void run_or_abort(Transport *t, const Bench *b) {
  if (!bench_once(t, b)) {
    fprintf(stderr, "carve: error: rank %d: a measurement failed; stopping every rank\n", t->rank);
    t->abort(t, 1);
  }
}

/* Seconds per operation: after a warm-up, `samples` samples of as many
 * operations as fill `target` seconds; every sample starts when all ranks
 * are there and counts as its slowest rank's time. The best sample wins. */
static double best_time(Transport *t, const Bench *b, int samples, double target) {
  run_or_abort(t, b);
  t->max(t, 0); /* a barrier */
  double t0 = now_seconds();
  run_or_abort(t, b);
  double one = t->max(t, now_seconds() - t0); /* the same on every rank */
  int inner = one >= target ? 1 : (int)fmin(target / fmax(one, 1e-7), 100000);
  double best = INFINITY;
  for (int s = 0; s < samples; s++) {
    t->max(t, 0);
    t0 = now_seconds();
    for (int i = 0; i < inner; i++) run_or_abort(t, b);
    double dt = t->max(t, now_seconds() - t0) / inner;
    if (dt < best) best = dt;
  }
  if (!t->flush(t)) t->abort(t, 1);
  return best;
}

typedef struct Profile {
  int world, omp_threads;
  bool quick;
  int samples;
  int ngemm, gemm_n[MAX_SIZES];
  double gemm_rate[MAX_SIZES]; /* FLOP/s per rank, f32 */
  double gemm_bf16[MAX_SIZES]; /* FLOP/s per rank, bf16 x bf16 (f32 accumulation) */
  const char *engine;          /* what runs the products */
  double workspace;            /* bytes the backend holds besides the arena */
  bool bf16_units;             /* the backend runs bf16 products on bf16 units */
  double mem_bandwidth;        /* bytes/s per rank */
  double vector_rate;          /* FLOP/s per rank of elementwise math (gelu, counted as the planner counts it) */
  double mem_bandwidth_bf16, vector_bf16; /* the same on bf16 arrays */
  double pass_bandwidth;                  /* bytes/s per rank of the per-parameter passes (measure_passes) */
  double ar_latency;                      /* seconds, 4 bytes */
  double p2p_latency;                     /* seconds one way, 4 bytes */
  int nmsg;
  int64_t msg_bytes[MAX_SIZES];
  double ar_time[MAX_SIZES], ar_busbw[MAX_SIZES];
  double p2p_time[MAX_SIZES], p2p_bw[MAX_SIZES];
  double overlap_cost;        /* of an all-reduce beside products, the fraction of its time they lose */
  double ov_compute, ov_comm; /* seconds: the products alone, the all-reduce alone */
  double ov_both;             /* seconds: the products with the all-reduce beside them */
} Profile;

/* C = A B on n x n matrices of dtype dt, through the einsum instruction. */
/* Seconds per run of the nstep instructions steps on the probe q (loaded
   here, freed after). */
static double probe_seconds(Transport *t, const Profile *p, Probe *q, int nstep, const Instr *steps, double target) {
  q->p.nstep = nstep;
  memcpy(q->step, steps, sizeof(Instr) * (size_t)nstep);
  probe_load(q);
  Bench b = {.kind = B_COMPUTE, .probe = q};
  double s = best_time(t, &b, p->samples, target);
  probe_free(q);
  return s;
}

static double gemm_rate(Transport *t, const Profile *p, int n, DType dt, double target) {
  Shape m = {2, {n, n}};
  Instr e = {.op = OP_EINSUM, .out = 2, .nin = 2, .in = {0, 1}, .spec = "ij,jk->ik"};
  return 2.0 * n * n * n / probe_seconds(t, p, probe_new(dt, &m, &m, &m), 1, &e, target);
}

static void measure_gemm(Transport *t, Profile *p, double target) {
  static const int full[] = {128, 256, 512, 1024, 2048}, quick[] = {128, 256, 512, 1024};
  const int *sizes = p->quick ? quick : full;
  p->ngemm = p->quick ? 4 : 5;
  for (int i = 0; i < p->ngemm; i++) {
    p->gemm_n[i] = sizes[i];
    p->gemm_rate[i] = gemm_rate(t, p, sizes[i], DT_F32, target);
    p->gemm_bf16[i] = gemm_rate(t, p, sizes[i], DT_BF16, target);
  }
}

/* The cost model's ramp-up dim (planner/gemm.c: a product of dims x runs
   at (x / (x + h))^3 of a large one's rate) that the measured rates imply:
   h such that the smallest size n ran at `ratio` of the largest N's rate,
   by bisection (the ramp is monotonic in h). 1 where small products ran
   as fast as large ones. */
static double fit_half_dim(double n, double N, double ratio) {
  double lo = 1, hi = 4096;
  if (!(ratio < 1)) return lo;
  for (int it = 0; it < 60; it++) {
    double h = sqrt(lo * hi), r = pow((n / (n + h)) / (N / (N + h)), 3);
    *(r > ratio ? &lo : &hi) = h;
  }
  return sqrt(lo * hi);
}

/* y += x (the acc instruction) on arrays of dtype dt: read x, read y, write y;
   bytes/s */
static double memory_rate(Transport *t, Profile *p, DType dt, double target) {
  Shape v = {1, {MEM_FLOATS}};
  Instr acc = {.op = OP_ACC, .out = 1, .nin = 1, .in = {0}};
  return 3.0 * dtype_size(dt) * MEM_FLOATS / probe_seconds(t, p, probe_new(dt, &v, &v, &v), 1, &acc, target);
}

static void measure_memory(Transport *t, Profile *p, double target) {
  p->mem_bandwidth = memory_rate(t, p, DT_F32, target);
  p->mem_bandwidth_bf16 = memory_rate(t, p, DT_BF16, target);
}

/* The per-parameter passes a step makes besides the products, as the
   programs run them over a parameter (docs/cost-model.md, "Per-parameter
   passes"): a microbatch's gradient added into its f32 accumulator (acc,
   12 bytes an element), then the update: the gradient norm's sum of squares
   (sumsq, 4), AdamW in place (adamw, 28) and the bf16 working copy (cast,
   6). Over PASS_FLOATS elements, about a small model's parameters, whose
   state then streams from memory as a step's does; 50 bytes an element over
   the time, the rate the cost model prices those bytes at. */
#define PASS_FLOATS (MEM_FLOATS / 4)
static void measure_passes(Transport *t, Profile *p, double target) {
  Shape v = {1, {PASS_FLOATS}}, scalar = {0};
  /* a: a microbatch's gradient, b: the parameter, c: its accumulator, d and
     e: the moments, f: the clip factor, g: the norm's sum, h: the bf16 copy */
  const DType dts[8] = {DT_F32, DT_F32, DT_F32, DT_F32, DT_F32, DT_F32, DT_F32, DT_BF16};
  const Shape *const shapes[8] = {&v, &v, &v, &v, &v, &scalar, &scalar, &v};
  Instr steps[5] = {{.op = OP_FILL, .out = 5, .f = {1}},
                    {.op = OP_ACC, .out = 2, .nin = 1, .in = {0}},
                    {.op = OP_SUMSQ, .out = 6, .nin = 1, .in = {2}, .f = {1}},
                    {.op = OP_ADAMW, .out = 1, .nin = 4, .in = {2, 3, 4, 5}, .f = {1e-4, 0.9, 0.999, 1e-8, 0.1}},
                    {.op = OP_CAST, .out = 7, .nin = 1, .in = {1}}};
  double s = probe_seconds(t, p, probe_make(8, dts, shapes, 2), 5, steps, target);
  p->pass_bandwidth = 50.0 * PASS_FLOATS / s;
}

/* gelu and its gradient over 1M floats: 8 FLOPs an element forward and 16
   backward, as the planner counts an activation (frontend/summary.c, and
   twice the forward for its gradient), so the rate prices them */
static double vector_rate(Transport *t, Profile *p, DType dt, double target) {
  enum { N = 1 << 20 };
  Shape v = {1, {N}};
  Instr steps[2] = {{.op = OP_GELU, .out = 2, .nin = 1, .in = {0}},
                    {.op = OP_GELU_BWD, .out = 1, .nin = 2, .in = {0, 2}}};
  return 24.0 * N / probe_seconds(t, p, probe_new(dt, &v, &v, &v), 2, steps, target);
}

static void measure_vector(Transport *t, Profile *p, double target) {
  p->vector_rate = vector_rate(t, p, DT_F32, target);
  p->vector_bf16 = vector_rate(t, p, DT_BF16, target);
}

static void measure_links(Transport *t, Profile *p, double target) {
  int *all = xmalloc(sizeof(int) * (size_t)p->world);
  for (int r = 0; r < p->world; r++) all[r] = r;
  int *const ranks[1] = {all};
  if (!t->groups(t, 1, &p->world, ranks)) t->abort(t, 1);
  free(all);
  static const int64_t full[] = {4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20},
                       quick[] = {64 << 10, 1 << 20, 16 << 20};
  const int64_t *sizes = p->quick ? quick : full;
  p->nmsg = p->quick ? 3 : 7;
  int64_t big = sizes[p->nmsg - 1];
  float *buf = xcalloc((size_t)big / sizeof(float), sizeof(float));
  Bench ar = {B_ALL_REDUCE, 1, buf, NULL}, pp = {B_PING_PONG, 4, buf, NULL};
  p->ar_latency = best_time(t, &ar, p->samples, target);
  p->p2p_latency = best_time(t, &pp, p->samples, target) / 2;
  double bus = 2.0 * (p->world - 1) / p->world;
  for (int i = 0; i < p->nmsg; i++) {
    int64_t bytes = p->msg_bytes[i] = sizes[i];
    ar.n = bytes / (int64_t)sizeof(float);
    pp.n = bytes;
    p->ar_time[i] = best_time(t, &ar, p->samples, target);
    p->ar_busbw[i] = bus * (double)bytes / p->ar_time[i];
    p->p2p_time[i] = best_time(t, &pp, p->samples, target) / 2;
    p->p2p_bw[i] = (double)bytes / p->p2p_time[i];
  }
  free(buf);
}

/* An all-reduce on a second thread, as the runtime's communication thread
   runs one (runtime/overlap.c). */
typedef struct Beside {
  Transport *t;
  Bench *b;
  bool ok;
} Beside;

static void *beside_run(void *arg) {
  Beside *x = arg;
  x->ok = bench_once(x->t, x->b);
  return NULL;
}

/* Seconds (the slowest rank's) of `reps` runs of the products, with the
   all-reduce `ar` on a second thread when given. */
static double products_time(Transport *t, Bench *gemm, int reps, Bench *ar) {
  Beside x = {t, ar, true};
  pthread_t th;
  t->max(t, 0); /* a barrier; then no MPI call here until the thread is done */
  double t0 = now_seconds();
  bool started = ar && pthread_create(&th, NULL, beside_run, &x) == 0;
  for (int i = 0; i < reps; i++) run_or_abort(t, gemm);
  if (started) pthread_join(th, NULL);
  if (!x.ok || (ar && !started)) t->abort(t, 1);
  return t->max(t, now_seconds() - t0);
}

/* overlap_cost: bf16 products (512^3, as many as take about twice an
   all-reduce of 16 MiB) alone, then with the all-reduce on a second
   thread; the time they lose over the all-reduce's own time, the best of
   the samples, within 0 and 1. */
static void measure_overlap(Transport *t, Profile *p) {
  if (!t->threads) return;
  enum { N = 512, FLOATS = 4 << 20 };
  Shape m = {2, {N, N}};
  Instr e = {.op = OP_EINSUM, .out = 2, .nin = 2, .in = {0, 1}, .spec = "ij,jk->ik"};
  Probe *q = probe_new(p->bf16_units ? DT_BF16 : DT_F32, &m, &m, &m);
  q->p.nstep = 1;
  q->step[0] = e;
  probe_load(q);
  float *buf = xcalloc(FLOATS, sizeof(float));
  Bench gemm = {.kind = B_COMPUTE, .probe = q}, ar = {B_ALL_REDUCE, FLOATS, buf, NULL};
  p->ov_comm = best_time(t, &ar, p->samples, 0.01);
  double one = best_time(t, &gemm, p->samples, 0.01);
  int reps = (int)fmax(1, ceil(2 * p->ov_comm / one));
  p->ov_compute = p->ov_both = INFINITY;
  for (int s = 0; s < p->samples; s++) {
    p->ov_compute = fmin(p->ov_compute, products_time(t, &gemm, reps, NULL));
    p->ov_both = fmin(p->ov_both, products_time(t, &gemm, reps, &ar));
  }
  p->overlap_cost = fmin(1, fmax(0, (p->ov_both - p->ov_compute) / p->ov_comm));
  free(buf);
  probe_free(q);
}

/* ------------------------------------------------------------ reporting */

static const char *size_label(int64_t bytes) {
  if (bytes >= 1 << 20) return arena_printf("%lld MiB", (long long)(bytes >> 20));
  if (bytes >= 1 << 10) return arena_printf("%lld KiB", (long long)(bytes >> 10));
  return arena_printf("%lld B", (long long)bytes);
}

static const char *time_label(double s) {
  return s < 1e-3 ? arena_printf("%.1f us", s * 1e6) : arena_printf("%.2f ms", s * 1e3);
}

static const char *plural(int n, const char *one, const char *many) { return n == 1 ? one : many; }

static void print_table(const Profile *p) {
  printf("carve profile: %d rank%s; per rank %d thread%s; products by %s%s\n", p->world, plural(p->world, "", "s"),
         p->omp_threads, plural(p->omp_threads, "", "s"), p->engine, p->quick ? "; quick" : "");
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  int threads = p->omp_threads;
  if (cores > 0 && (long)p->world * threads > cores)
    printf("note: %d rank%s x %d threads on %ld cores: oversubscribed; set OMP_NUM_THREADS=%ld to measure "
           "what training gets\n",
           p->world, plural(p->world, "", "s"), threads, cores, cores / p->world > 0 ? cores / p->world : 1);
  printf("\n%-30s %16s %16s %16s\n", "products, all ranks at once", "f32 per rank", "bf16 per rank", "bf16 all ranks");
  for (int i = 0; i < p->ngemm; i++)
    printf("  %-28s %16s %16s %16s\n", arena_printf("%d^3", p->gemm_n[i]),
           arena_printf("%.1f GFLOP/s", p->gemm_rate[i] / 1e9), arena_printf("%.1f GFLOP/s", p->gemm_bf16[i] / 1e9),
           arena_printf("%.1f GFLOP/s", p->world * p->gemm_bf16[i] / 1e9));
  printf("%-30s %16s %16s\n", arena_printf("memory, y += x, %s arrays", size_label(MEM_FLOATS * 4)),
         arena_printf("%.2f GB/s", p->mem_bandwidth / 1e9),
         arena_printf("%.2f GB/s", p->world * p->mem_bandwidth / 1e9));
  printf("%-30s %16s %16s\n", "  the same on bf16 arrays", arena_printf("%.2f GB/s", p->mem_bandwidth_bf16 / 1e9),
         arena_printf("%.2f GB/s", p->world * p->mem_bandwidth_bf16 / 1e9));
  printf("%-30s %16s %16s\n", "acc, sumsq, adamw, cast", arena_printf("%.2f GB/s", p->pass_bandwidth / 1e9),
         arena_printf("%.2f GB/s", p->world * p->pass_bandwidth / 1e9));
  printf("%-30s %16s %16s\n", "gelu + gradient, 1M floats", arena_printf("%.2f GFLOP/s", p->vector_rate / 1e9),
         arena_printf("%.2f GFLOP/s", p->world * p->vector_rate / 1e9));
  printf("%-30s %16s %16s\n", "  the same on bf16 arrays", arena_printf("%.2f GFLOP/s", p->vector_bf16 / 1e9),
         arena_printf("%.2f GFLOP/s", p->world * p->vector_bf16 / 1e9));
  if (p->world == 1) {
    printf("\nlinks: one rank, nothing to measure (mpirun -np N carve profile measures N ranks)\n");
    return;
  }
  printf("\n%-12s %30s %30s\n", "message", arena_printf("all-reduce over %d ranks", p->world),
         "point to point, 0 -> 1");
  printf("%-12s %12s %17s %12s %17s\n", "", "time", "bus bandwidth", "one way", "bandwidth");
  printf("  %-10s %12s %17s %12s %17s\n", size_label(4), time_label(p->ar_latency), "", time_label(p->p2p_latency), "");
  for (int i = 0; i < p->nmsg; i++)
    printf("  %-10s %12s %17s %12s %17s\n", size_label(p->msg_bytes[i]), time_label(p->ar_time[i]),
           arena_printf("%.2f GB/s", p->ar_busbw[i] / 1e9), time_label(p->p2p_time[i]),
           arena_printf("%.2f GB/s", p->p2p_bw[i] / 1e9));
}

/* v with an exponent that is a multiple of 3: 101.2e9, 4.8e-6. */
static const char *eng(double v) {
  if (!(v > 0)) return "0";
  int e = (int)floor(log10(v) / 3) * 3;
  const char *m = arena_printf("%.4g", v / pow(10, e));
  if (atof(m) >= 1000) m = arena_printf("%.4g", v / pow(10, e += 3));
  return e ? arena_printf("%se%d", m, e) : m;
}

/* The CPU's model name, without '#' (which would start a comment). */
static const char *cpu_name(void) {
  size_t len;
  char why[128];
  char *text = read_file_limit("/proc/cpuinfo", LIMIT_TEXT, &len, why, sizeof why);
  const char *name = "CPU";
  char *s = text ? strstr(text, "model name") : NULL;
  if (s && (s = strchr(s, ':'))) {
    s += 1 + strspn(s + 1, " \t");
    char *copy = arena_strndup(s, strcspn(s, "\n"));
    for (char *q = copy; *q; q++)
      if (*q == '#') *q = ' ';
    if (*copy) name = copy;
  }
  free(text);
  return name;
}

static double physical_memory(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? (double)pages * (double)page : 8e9;
}

static void write_cluster(FILE *f, const Profile *p) {
  char when[64];
  time_t now = time(NULL);
  strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", gmtime(&now));
  int w = p->world, g = p->ngemm - 1, m = p->nmsg - 1;
  double ram = physical_memory(), memory = 0.75 * ram / w;
  double bw = w > 1 ? p->ar_busbw[m] : LOCAL_LINK_BANDWIDTH, lat = w > 1 ? p->ar_latency : LOCAL_LINK_LATENCY;
  fprintf(f,
          "# profiled.cluster: written by `carve profile%s` (carve %s) on %s.\n"
          "# This machine as %d CPU rank%s (MPI) on one node; per rank %d thread%s; products by\n"
          "# %s. Every figure is per rank, measured with all ranks running at once; the\n"
          "# slowest rank's time, best of %d samples. Measure again for another rank count.\n"
          "# Format: docs/cluster-format.md.\n",
          p->quick ? " --quick" : "", CARVE_VERSION, when, w, plural(w, "", "s"), p->omp_threads,
          plural(p->omp_threads, "", "s"), p->engine, p->samples);
  fprintf(f, "name profiled\n");
  fprintf(f, "device %s (one MPI rank, oneDNN)\n", cpu_name());
  fprintf(f, "nodes 1\n");
  fprintf(f, "devices_per_node %d\n", w);
  fprintf(f, "%-34s # f32 einsum %d^3%s\n", arena_printf("flops_f32 %s", eng(p->gemm_rate[g])), p->gemm_n[g],
          w > 1 ? arena_printf(" (%.1f GFLOP/s on all ranks)", w * p->gemm_rate[g] / 1e9) : "");
  if (p->bf16_units)
    fprintf(f, "%-34s # bf16 einsum %d^3, f32 accumulation\n", arena_printf("flops_bf16 %s", eng(p->gemm_bf16[g])),
            p->gemm_n[g]);
  else /* bf16 runs, widened to f32, but plans for this machine should be fp32 */
    fprintf(f, "%-34s # no bf16 units: bf16 einsums ran at %.1f GFLOP/s, widened to f32\n", "flops_bf16 0",
            p->gemm_bf16[g] / 1e9);
  /* the rates above are what a large product reaches here: the cost model's
     large-product efficiency is 1, and its ramp-up dim fits the small sizes */
  const double *rate = p->bf16_units ? p->gemm_bf16 : p->gemm_rate;
  double half = fit_half_dim(p->gemm_n[0], p->gemm_n[g], rate[0] / rate[g]);
  fprintf(f, "%-34s # the rates above are a large product's here\n", "gemm_efficiency 1");
  fprintf(f, "gemm_efficiency_f32 1\n");
  fprintf(f, "%-34s # fitted: %d^3 ran at %.0f%% of the %d^3 rate (%s)\n", arena_printf("gemm_half_dim %.3g", half),
          p->gemm_n[0], 100 * rate[0] / rate[g], p->gemm_n[g], p->bf16_units ? "bf16" : "f32");
  fprintf(f, "%-34s # gelu and its gradient over 1M floats, 24 FLOPs an element\n",
          arena_printf("flops_vector %s", eng(p->vector_rate)));
  fprintf(f, "%-34s # the CPU backend's conversion chunks (%d thread%s)\n",
          arena_printf("workspace %s", eng(p->workspace)), p->omp_threads, plural(p->omp_threads, "", "s"));
  fprintf(f, "%-34s # 3/4 of %.1f GB of physical memory, shared by %d rank%s\n",
          arena_printf("memory %s", eng(round(memory / 1e6) * 1e6)), ram / 1e9, w, plural(w, "", "s"));
  fprintf(f, "%-34s # y += x on %s float arrays: 12 bytes per element\n",
          arena_printf("mem_bandwidth %s", eng(p->mem_bandwidth)), size_label(MEM_FLOATS * 4));
  fprintf(f, "%-34s # acc, sumsq, adamw and cast over %s parameters:\n",
          arena_printf("pass_bandwidth %s", eng(p->pass_bandwidth)), size_label(PASS_FLOATS * 4));
  fprintf(f, "%-34s # 50 bytes per element\n", "");
  fprintf(f, "%-34s # the same two for bf16 programs: gelu and its gradient,\n",
          arena_printf("flops_vector_bf16 %s", eng(p->vector_bf16)));
  fprintf(f, "%-34s # y += x on bf16 arrays (6 bytes per element)\n",
          arena_printf("mem_bandwidth_bf16 %s", eng(p->mem_bandwidth_bf16)));
  if (w > 1) {
    fprintf(f, "%-34s # all-reduce of %s over %d ranks: bus bandwidth\n", arena_printf("intra_bandwidth %s", eng(bw)),
            size_label(p->msg_bytes[m]), w);
    fprintf(f, "%-34s # 2(n-1)/n x bytes / time (point to point 0 -> 1: %s)\n", "", eng(p->p2p_bw[m]));
    fprintf(f, "%-34s # all-reduce of 4 bytes over %d ranks (point to point\n",
            arena_printf("intra_latency %s", eng(lat)), w);
    fprintf(f, "%-34s # one way: %s)\n", "", eng(p->p2p_latency));
  } else {
    fprintf(f, "%-34s # one rank: no link to measure; the figures of\n", arena_printf("intra_bandwidth %s", eng(bw)));
    fprintf(f, "%-34s # local.cluster (mpirun -np N carve profile measures)\n",
            arena_printf("intra_latency %s", eng(lat)));
  }
  fprintf(f, "%-34s # one node: the same as inside, so a resize still plans\n",
          arena_printf("inter_bandwidth %s", eng(bw)));
  fprintf(f, "inter_latency %s\n", eng(lat));
  if (p->ov_comm > 0) {
    fprintf(f, "%-34s # an all-reduce of 16 MiB (%.3g ms) on a second thread beside\n",
            arena_printf("overlap_cost %.2f", p->overlap_cost), p->ov_comm * 1e3);
    fprintf(f, "%-34s # products took them %.3g ms instead of %.3g ms\n", "", p->ov_both * 1e3, p->ov_compute * 1e3);
  }
}

/* Writes the cluster file and reads it back through the planner's loader. */
static bool save(const char *path, const Profile *p) {
  const char *tmp;
  FILE *f = temp_beside(path, &tmp);
  if (f) write_cluster(f, p);
  if (!temp_close(f, tmp, path, true)) {
    fprintf(stderr, "carve: error: cannot write %s: %s\n", path, strerror(errno));
    return false;
  }
  if (!cluster_load(path, stderr)) {
    fprintf(stderr, "carve: error: %s: the measured figures are out of the cluster format's ranges\n", path);
    return false;
  }
  printf("\nwrote %s (check it with: carve cluster %s)\n", path, path);
  return true;
}

static const char *engine_name(double *workspace, bool *bf16_units) {
  char why[256];
  Backend *b = backend_open(NULL, why, sizeof why);
  if (!b) carve_fatal("profile: %s", why);
  const char *d = arena_strdup(b->describe);
  *workspace = (double)b->workspace;
  *bf16_units = b->bf16_fast;
  b->close(b);
  return d;
}

static int profile(Transport *t, int argc, char **argv) {
  bool root = t->rank == 0;
  if (wants_help(argc, argv)) {
    if (root) profile_help();
    return 0;
  }
  Opts o = {0};
  const char *bad = parse_args(argc, argv, &o);
  if (bad) return root ? usage_error("profile", "%s", bad) : 2;
  bool ok = !root || !o.out || can_write(o.out);
  if (!ok) fprintf(stderr, "carve: error: cannot write %s: %s\n", o.out, strerror(errno));
  if (!t->agree(t, ok)) return 1;

  double workspace = 0;
  bool bf16_units = false;
  const char *engine = engine_name(&workspace, &bf16_units);
  Profile p = {.world = t->world,
               .omp_threads = omp_get_max_threads(),
               .engine = engine,
               .workspace = workspace,
               .bf16_units = bf16_units,
               .quick = o.quick,
               .samples = o.quick ? 3 : 5};
  double target = o.quick ? 0.01 : 0.1; /* seconds per sample */
  measure_gemm(t, &p, target);
  measure_memory(t, &p, target);
  measure_passes(t, &p, target);
  measure_vector(t, &p, target);
  if (p.world > 1) measure_links(t, &p, target);
  if (p.world > 1) measure_overlap(t, &p);
  if (!root) return 0;
  print_table(&p);
  if (!o.out) {
    printf("\n(-o FILE writes these figures as a cluster file)\n");
    return 0;
  }
  fflush(stdout);
  return save(o.out, &p) ? 0 : 1;
}

int cmd_profile(int argc, char **argv) {
  Transport *t = transport_open(&argc, &argv);
  int rc = profile(t, argc, argv);
  t->close(t);
  return rc;
}
