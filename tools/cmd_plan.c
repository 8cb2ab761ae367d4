/* cmd_plan.c: `carve plan MODEL --cluster C [--mesh AxB] --intra-only`: how
 * to split every tensor of the training step over a logical mesh, chosen by
 * the intra-operator ILP; printed as a report, or as JSON. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "planner.h"
#include "tools.h"

static void help(void) {
  printf("usage: carve plan MODEL --cluster C [options]\n"
         "       carve plan MODEL --cluster C [--mesh AxB] --intra-only [options]\n\n"
         "Chooses how MODEL's training step runs on the cluster: pipeline stages (layer spans on\n"
         "submeshes, 1F1B), microbatches, and inside each stage how every parameter and activation\n"
         "is split over a logical mesh: an integer program (GLPK) over each op's sharding strategies,\n"
         "minimising compute plus communication time under the device memory. --intra-only plans one\n"
         "mesh of all devices without stages.\n\n"
         "  --cluster NAME|FILE    a shipped cluster (dgx-a100, dgx-h100, p3-16xlarge, local) or a file\n"
         "  --nodes N  --devices-per-node N   resize the cluster\n"
         "  --mesh AxB | N         the logical mesh (default: try every n0 x n1 of all devices, keep the best)\n"
         "  --intra-only           only the intra-operator pass, on one mesh\n"
         "  --microbatches N       fix the microbatch count (it divides the batch); default: searched\n"
         "  --manual \"dp=32,tp=8,pp=2,mb=8,schedule=1f1b,zero=1,recompute=none\"\n"
         "                         evaluate a hand-written plan instead of searching (keys left out are chosen);\n"
         "                         overlap=off predicts a run without overlap (carve run --overlap off);\n"
         "                         sp=1 asks for sequence parallelism, sp=0 rules it out (default: chosen)\n"
         "  --zero auto|0|1|2|3    ZeRO stage (default auto: the lowest that fits)\n"
         "  --force-dp             split only the batch dim (pure data parallelism)\n"
         "  --batch-axis 0|1       the batch dim must use this mesh axis\n"
         "  --precision fp32|bf16 (default: bf16 mixed precision when the devices have a bf16 rate)\n"
         "  --time-limit S         solver time limit in seconds (default 60)\n"
         "  --preset NAME  --set dim=N,...   model sizes\n"
         "  -o DIR                 also write DIR/plan.json and, for a whole plan, one program per rank\n"
         "                         (DIR/rankN.prog, default training options) for mpirun -np N carve run DIR;\n"
         "                         the plan is then made of splits the programs run (docs/sharding.md)\n"
         "  --json                 print JSON instead of the report\n"
         "  --html FILE            also write the report as one self-contained HTML page: the simulated\n"
         "                         timeline of a step, memory per device by kind against the capacity,\n"
         "                         the collectives and every tensor's sharding\n"
         "  --quiet                no progress (on standard error, for searches over a second: a status\n"
         "                         line on a terminal, plain lines every few seconds elsewhere, none when\n"
         "                         standard error is the same file as the output)\n");
}

/* "2" or, when the stages differ, "1:2" */
static const char *stage_dps(const Layout *L) {
  const char *s = arena_printf("%d", L->stage_dp ? L->stage_dp[0] : L->dp);
  bool differ = false;
  for (int d = 1; d < L->pp && L->stage_dp; d++) differ |= L->stage_dp[d] != L->stage_dp[0];
  for (int d = 1; d < L->pp && differ; d++) s = arena_printf("%s:%d", s, L->stage_dp[d]);
  return s;
}

/* The training options a plan's programs are made with: the defaults, in the precision the plan priced. */
static Train plan_train(const PipelinePlan *pp) {
  Train t;
  train_defaults(&t);
  t.precision = pp->stages[0].plan->opt.mixed ? PREC_BF16 : PREC_FP32;
  return t;
}

/* The bytes the first rank of each pipeline device holds (its arena and
   its collectives' staging), in device order, as first_of_stage makes them. */
typedef struct DeviceBytes {
  double *bytes;
  int n;
} DeviceBytes;

static bool measure_rank(const Program *p, void *ctx) {
  DeviceBytes *M = ctx;
  M->bytes[M->n++] = (double)p->arena_bytes + (double)comm_staging_bytes(p);
  return true;
}

/* Each stage's memory per device as its programs take it (the first rank
   of each device, made in memory): arena, staging and the cluster's backend
   workspace. The model's estimate stays when the plan is of a kind carve
   does not lower (pipeline_layout; -o says why). False after the error when
   it is of a kind carve lowers but its programs cannot be made: the plan
   could not be run, and its memory would be unchecked. */
static bool lowered_memory(PipelinePlan *pp, const char *model_path, const ElabOptions *eo, FILE *err) {
  Layout L;
  int *stage_last = arena_alloc(sizeof(int) * (size_t)(pp->nstages + 1));
  FILE *quiet = fopen("/dev/null", "w");
  bool ok = pipeline_layout(pp, &L, stage_last, quiet);
  fclose(quiet);
  if (!ok) return true;
  L.first_of_stage = true;
  Train t = plan_train(pp);
  DeviceBytes M = {arena_alloc(sizeof(double) * (size_t)L.pp), 0};
  if (!compile_layout(model_path, eo, &t, 1234, &L, measure_rank, &M, err)) {
    fprintf(err, "carve: error: the plan found cannot be made into programs (above), so it is not shown\n");
    return false;
  }
  for (int s = 0; s < pp->nstages; s++) pp->stages[s].memory = M.bytes[s] + pp->cluster->workspace;
  return true;
}

/* The plan found (by the search or by hand), held to the memory its
   programs take: a plan whose programs would not fit is searched again
   with the devices' memory lessened by the excess, a few times. */
static PipelinePlan *plan_that_fits(const char *model_path, const ElabOptions *eo, Cluster *cl, const PlanOptions *po,
                                    const Manual *manual, int microbatches, FILE *progress) {
  Cluster *budget = arena_alloc(sizeof(Cluster)); /* the plans keep pointing at it */
  *budget = *cl;
  for (int tries = 0;; tries++) {
    PipelinePlan *pp = manual ? plan_manual(model_path, eo, budget, po, manual, stderr)
                              : plan_pipeline(model_path, eo, budget, po, microbatches, progress, stderr);
    char a[32], b[32];
    if (!pp && tries)
      fprintf(stderr,
              "carve: note: that search allowed %s per device: a plan the estimate fitted into the %s of %s needed "
              "more as programs\n",
              fmt_bytes(budget->memory, a, sizeof a), fmt_bytes(cl->memory, b, sizeof b), cl->name);
    if (!pp) return NULL;
    pp->cluster = cl;
    if (!lowered_memory(pp, model_path, eo, stderr)) return NULL;
    double most = 0;
    for (int s = 0; s < pp->nstages; s++) most = fmax(most, pp->stages[s].memory);
    if (most <= cl->memory) return pp;
    if (tries == 5) {
      fprintf(stderr, "carve: error: the best plan's programs need %s per device, more than the %s of %s\n",
              fmt_bytes(most, a, sizeof a), fmt_bytes(cl->memory, b, sizeof b), cl->name);
      return NULL;
    }
    budget->memory *= 0.98 * cl->memory / most; /* as much less as the estimate fell short */
    if (progress)
      fprintf(progress, "the plan's programs need %s per device, more than the model estimated: searching with %s\n",
              fmt_bytes(most, a, sizeof a), fmt_bytes(budget->memory, b, sizeof b));
  }
}

/* Whether two streams are the same file that is not a terminal (2>&1 into
   a file or pipe): progress there would land in the plan's output. */
static bool same_file(FILE *a, FILE *b) {
  struct stat x, y;
  if (isatty(fileno(b)) || fstat(fileno(a), &x) || fstat(fileno(b), &y)) return false;
  return x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

/* DIR/rankN.prog for every rank of a whole plan (default training options),
   or a note on why this plan cannot become programs yet; put in place with
   the staged plan.json (rank_files_commit), or, unless planned (the plan was
   not written whole), nothing put in place. */
static bool write_programs(const char *dir, const char *model_path, const ElabOptions *eo, const PipelinePlan *pp,
                           bool quiet, bool planned) {
  if (!planned) return rank_files_commit(dir, 0, true, false);
  Layout L;
  int *stage_last = arena_alloc(sizeof(int) * (size_t)(pp->nstages + 1));
  char *why = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&why, &len);
  bool ok = pipeline_layout(pp, &L, stage_last, m);
  fclose(m);
  if (!ok) { /* plan.json alone: an earlier plan's programs go */
    ok = rank_files_commit(dir, 0, true, true);
    if (ok)
      fprintf(stderr,
              "carve: note: %s/plan.json written, but no programs: %s, which carve does not lower to programs "
              "yet (--force-dp plans data parallelism only)\n",
              dir, why);
    free(why);
    return ok;
  }
  free(why);
  Train t = plan_train(pp); /* what the plan priced */
  RankFiles F = {.dir = dir};
  int world = layout_world(&L);
  /* plan.json and the programs in place together, an earlier plan's extra ranks removed; a refused plan's
     programs (a deadlock) never */
  if (!rank_files_commit(dir, world, true, compile_layout(model_path, eo, &t, 1234, &L, rank_file_write, &F, stderr)))
    return false;
  if (!quiet)
    printf("\nwrote %s/plan.json and rank0.prog .. rank%d.prog (dp=%s tp=%d pp=%d, %d microbatch%s, %d unit%s per "
           "step); train it with: mpirun -np %d carve run %s\n",
           dir, world - 1, stage_dps(&L), L.tp, L.pp, L.microbatches, L.microbatches == 1 ? "" : "es",
           L.microbatches * layout_units(&L), L.microbatches * layout_units(&L) == 1 ? "" : "s", world, dir);
  return true;
}

/* DIR/plan.json, written whole to its staged name (rank_files_commit puts it in place with the programs). */
static bool write_plan(const char *dir, const Plan *p, const PipelinePlan *pp) {
  if (!dir) return true;
  const char *path = staged_plan(dir), *tmp;
  FILE *f = mkdir(dir, 0777) == 0 || errno == EEXIST ? temp_beside(path, &tmp) : NULL;
  if (f && pp)
    pipeline_json(pp, f);
  else if (f)
    plan_json(p, f);
  bool ok = temp_close(f, tmp, path, true);
  if (!ok) fprintf(stderr, "carve: error: cannot write %s/plan.json: %s\n", dir, strerror(errno));
  return ok;
}

int cmd_plan(int argc, char **argv) {
  if (wants_help(argc, argv)) return help(), 0;
  const char *model = NULL, *cluster = NULL, *mesh = NULL, *out = NULL, *precision = NULL, *manual = NULL;
  const char *html = NULL;
  bool json = false, intra = false, quiet = false;
  int nodes = 0, dpn = 0, microbatches = 0;
  PlanOptions po = {.zero = -1, .batch_axis = -1, .time_limit = 60};
  ElabOptions eo = {0};
  int rc = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    bool takes = true;
    if (!strcmp(a, "--json"))
      json = true, takes = false;
    else if (!strcmp(a, "--quiet"))
      quiet = true, takes = false;
    else if (!strcmp(a, "--intra-only"))
      intra = true, takes = false;
    else if (!strcmp(a, "--force-dp"))
      po.force_dp = true, takes = false;
    else if (a[0] != '-') {
      if (model) return usage_error("plan", "unexpected argument '%s'", a);
      model = a, takes = false;
    } else if (!v) {
      return usage_error("plan", "%s needs a value", a);
    } else if (!strcmp(a, "--cluster"))
      cluster = v;
    else if (!strcmp(a, "--manual"))
      manual = v;
    else if (!strcmp(a, "--mesh"))
      mesh = v;
    else if (!strcmp(a, "-o"))
      out = v;
    else if (!strcmp(a, "--html"))
      html = v;
    else if (!strcmp(a, "--precision"))
      precision = v;
    else if (!strcmp(a, "--preset"))
      eo.preset = v;
    else if (!strcmp(a, "--set")) {
      if (!parse_sets(v, &eo.sets, &eo.nsets, stderr)) goto done;
    } else if (!strcmp(a, "--zero") && !strcmp(v, "auto")) {
      po.zero = -1;
    } else if (!strcmp(a, "--zero")) {
      int64_t x;
      if (!opt_integer("plan", a, v, 0, 3, &x)) goto done;
      po.zero = (int)x;
    } else if (!strcmp(a, "--time-limit")) {
      if (!opt_number("plan", a, v, 1e-3, 1e7, &po.time_limit)) goto done;
    } else if (!strcmp(a, "--nodes") || !strcmp(a, "--devices-per-node") || !strcmp(a, "--batch-axis") ||
               !strcmp(a, "--microbatches")) {
      bool axis = !strcmp(a, "--batch-axis"), mb = !strcmp(a, "--microbatches");
      int64_t x;
      if (!opt_integer("plan", a, v, axis ? 0 : 1, axis ? 1 : mb ? 1024 : 1e6, &x)) goto done;
      *(axis ? &po.batch_axis : mb ? &microbatches : !strcmp(a, "--nodes") ? &nodes : &dpn) = (int)x;
    } else {
      rc = usage_error("plan", "unknown option '%s'", a);
      goto done;
    }
    if (takes) i++;
  }
  if (!model) {
    rc = usage_error("plan", "which model? give a .graph file or a shipped model name");
    goto done;
  }
  if (!cluster) {
    rc = usage_error("plan", "which cluster? give --cluster (dgx-a100, dgx-h100, p3-16xlarge, local, or a file)");
    goto done;
  }
  rc = 1;
  Cluster *cl = cluster_load(cluster, stderr);
  if (!cl || !cluster_resize(cl, nodes, dpn, stderr)) goto done;
  int n0 = 1, n1 = cluster_devices(cl);
  if (mesh && !mesh_parse(mesh, &n0, &n1)) {
    rc = usage_error("plan", "--mesh expects AxB or N, got '%s'", mesh);
    goto done;
  }
  po.mixed = cl->flops_bf16 > 0;
  if (precision) {
    Precision pr;
    if (!precision_parse(precision, &pr)) {
      rc = usage_error("plan", "--precision is fp32 or bf16, not '%s'", precision);
      goto done;
    }
    po.mixed = pr == PREC_BF16;
  }
  if (!intra) { /* the whole plan: stages, submeshes, microbatches, schedule */
    if (mesh) {
      rc = usage_error("plan", "--mesh goes with --intra-only; the full plan chooses each stage's mesh");
      goto done;
    }
    Manual m;
    if (manual && !manual_parse(manual, "--manual", &m, stderr)) goto done;
    if (manual && microbatches && m.mb && m.mb != microbatches) {
      fprintf(stderr, "carve plan: error: --microbatches %d and --manual's mb=%d disagree (give one)\n", microbatches,
              m.mb);
      goto done;
    }
    if (manual && microbatches) m.mb = microbatches;
    po.lowerable = out != NULL; /* plans to be run: no split the kernels cannot take (frontend/rules.c) */
    FILE *progress = !quiet && !same_file(stdout, stderr) ? stderr : NULL; /* never into the plan's output */
    PipelinePlan *pp = plan_that_fits(model_resolve(model), &eo, cl, &po, manual ? &m : NULL, microbatches, progress);
    if (!pp) goto done;
    if (json)
      pipeline_json(pp, stdout);
    else {
      pipeline_report(pp, stdout);
    }
    rc = write_plan(out, NULL, pp) && (!html || pipeline_html(pp, html, stderr)) ? 0 : 1;
    if (out) /* the programs, then both in place (or the staged plan removed) */
      rc = write_programs(out, model_resolve(model), &eo, pp, json, rc == 0) ? rc : 1;
    goto done;
  }
  Graph *g = frontend_training(&(Front){.path = model_resolve(model), .eo = &eo}, stderr);
  if (!g) goto done;
  Plan *p = NULL;
  if (mesh) {
    Mesh me;
    if (!mesh_make(cl, n0, n1, po.mixed, &me, stderr)) goto done;
    p = plan_intra(g, cl, &me, &po, stderr);
  } else {
    p = plan_best_mesh(g, cl, &po, json ? NULL : stdout, stderr);
  }
  if (!p) goto done;
  if (json)
    plan_json(p, stdout);
  else
    plan_report(p, stdout);
  /* one mesh's plan: no programs (an earlier plan's go) */
  rc = write_plan(out, p, NULL) && (!out || rank_files_commit(out, 0, true, true)) &&
               (!html || plan_html(p, html, stderr))
           ? 0
           : 1;
done:
  free(eo.sets);
  return rc;
}
