/* cmd_train.c: the subcommands that take a model or a program: check,
 * compile, run, train, explain; and data, which makes token files.
 *
 * Options common to commands that take a model:
 *   --preset NAME        size preset defined in the model file
 *   --set a=1,b=2        dim overrides (repeatable; later wins)
 * Training options (compile, train):
 *   --optimizer adamw|sgd  --lr X  --wd X  --beta1 X  --beta2 X  --eps X
 *   --momentum X  --clip X (0: off)  --warmup N  --microbatches N  --seed N
 *   --precision fp32|bf16 (default: bf16 where the backend has bf16 units)
 *   (run takes --precision too: it checks the program's)
 * Run options (run, train):
 *   --steps N  --data FILE  --log-every N  --quiet  --profile  --save-params PATH  --backend cpu|cuda|cpu-staged
 *   --checkpoint-dir CK  --checkpoint-every N  --keep K  --resume CK  --init-from FILE  --comm-timeout S
 *   --overlap on|off  --comm auto|host|nccl
 * compile --layout "dp=2,pp=2,mb=4,schedule=1f1b,zero=1,recompute=full":
 * one program per rank; explain --rank N prints rank N's. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>

#include "../runtime/backend.h"
#include "planner.h"
#include "tools.h"

int usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "carve %s: error: ", cmd);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see 'carve %s --help')\n", cmd);
  va_end(ap);
  return 2;
}

bool opt_number(const char *cmd, const char *opt, const char *v, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double x = v ? strtod(v, &end) : 0;
  if (!v || end == v || *end || errno || !isfinite(x) || x < lo || x > hi) {
    usage_error(cmd, "%s expects a number from %g to %g, got '%s'", opt, lo, hi, v ? v : "");
    return false;
  }
  *out = x;
  return true;
}

bool opt_integer(const char *cmd, const char *opt, const char *v, double lo, double hi, int64_t *out) {
  double x;
  if (!opt_number(cmd, opt, v, lo, hi, &x)) return false;
  if (x != floor(x)) {
    usage_error(cmd, "%s expects a whole number, got '%s'", opt, v);
    return false;
  }
  *out = (int64_t)x;
  return true;
}

bool wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return true;
  return false;
}

typedef struct Opts {
  const char *cmd;
  const char *model, *out, *data, *program;
  ElabOptions elab;
  Train train;
  uint64_t seed;
  const char *layout, *save_params, *trace;
  const char *checkpoint_dir, *resume, *init_from;
  const char *backend; /* --backend: NULL is the CPU */
  const char *comm;    /* --comm: NULL is auto */
  double comm_timeout; /* --comm-timeout seconds (0: the transport's default) */
  int steps, log_every, rank, checkpoint_every, keep;
  bool quiet, dump, dump_training, profile;
  bool serial_comm;   /* --overlap off */
  bool precision_set; /* --precision given: train.precision holds it */
} Opts;

/* Parses argv (after the subcommand). `allowed` lists the option groups the
 * command takes: m(odel) t(rain) r(un) o(utput) d(ump). */
static bool parse_opts(int argc, char **argv, const char *allowed, Opts *o) {
  train_defaults(&o->train);
  o->seed = 1234;
  o->steps = 10;
  o->log_every = 10;
  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    char *v = NULL;
    char key[64];
    if (a[0] != '-' || a[1] == 0) {
      if (o->model) {
        usage_error(o->cmd, "unexpected argument '%s'", a);
        return false;
      }
      o->model = a;
      continue;
    }
    const char *eq = strchr(a, '=');
    snprintf(key, sizeof key, "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
    bool flag = !strcmp(key, "--quiet") || !strcmp(key, "--dump") || !strcmp(key, "--dump-training") ||
                !strcmp(key, "--profile");
    if (!flag) {
      v = eq ? (char *)eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v) {
        usage_error(o->cmd, "%s needs a value", key);
        return false;
      }
    }
    double x;
    int64_t n;
    bool ok = true, known = true;
#define GROUP(c) (strchr(allowed, c) != NULL)
    if (GROUP('m') && !strcmp(key, "--preset"))
      o->elab.preset = v;
    else if (GROUP('m') && !strcmp(key, "--set"))
      ok = parse_sets(v, &o->elab.sets, &o->elab.nsets, stderr);
    else if ((GROUP('t') || GROUP('r')) && !strcmp(key, "--precision")) {
      ok = precision_parse(v, &o->train.precision);
      if (!ok) usage_error(o->cmd, "--precision is fp32 or bf16, not '%s'", v);
      o->precision_set = true;
    } else if (GROUP('t') && !strcmp(key, "--optimizer")) {
      if (!strcmp(v, "adamw"))
        o->train.opt = OPT_ADAMW;
      else if (!strcmp(v, "sgd"))
        o->train.opt = OPT_SGD;
      else
        ok = usage_error(o->cmd, "--optimizer is adamw or sgd, not '%s'", v) == 0;
    } else if (GROUP('t') && !strcmp(key, "--lr"))
      ok = opt_number(o->cmd, key, v, 0, 10, &o->train.lr);
    else if (GROUP('t') && !strcmp(key, "--wd"))
      ok = opt_number(o->cmd, key, v, 0, 10, &o->train.wd);
    else if (GROUP('t') && !strcmp(key, "--beta1"))
      ok = opt_number(o->cmd, key, v, 0, 0.999999, &o->train.beta1);
    else if (GROUP('t') && !strcmp(key, "--beta2"))
      ok = opt_number(o->cmd, key, v, 0, 0.999999, &o->train.beta2);
    else if (GROUP('t') && !strcmp(key, "--eps"))
      ok = opt_number(o->cmd, key, v, 1e-30, 1, &o->train.eps);
    else if (GROUP('t') && !strcmp(key, "--momentum"))
      ok = opt_number(o->cmd, key, v, 0, 0.999999, &o->train.momentum);
    else if (GROUP('t') && !strcmp(key, "--clip"))
      ok = opt_number(o->cmd, key, v, 0, 1e30, &o->train.clip);
    else if (GROUP('t') && !strcmp(key, "--warmup")) {
      ok = opt_integer(o->cmd, key, v, 0, 1e9, &n);
      o->train.warmup = (int)n;
    } else if (GROUP('t') && !strcmp(key, "--microbatches")) {
      ok = opt_integer(o->cmd, key, v, 1, 1e6, &n);
      o->train.microbatches = (int)n;
    } else if (GROUP('t') && !strcmp(key, "--seed")) {
      ok = opt_integer(o->cmd, key, v, 0, 1e15, &n);
      o->seed = (uint64_t)n;
    } else if (GROUP('r') && !strcmp(key, "--steps")) {
      ok = opt_integer(o->cmd, key, v, 0, 1e9, &n);
      o->steps = (int)n;
    } else if (GROUP('r') && !strcmp(key, "--log-every")) {
      ok = opt_integer(o->cmd, key, v, 1, 1e9, &n);
      o->log_every = (int)n;
    } else if (GROUP('r') && !strcmp(key, "--data"))
      o->data = v;
    else if (GROUP('r') && !strcmp(key, "--backend")) {
      o->backend = v;
      if (strcmp(v, "cpu") && strcmp(v, "cuda") && strcmp(v, "cpu-staged"))
        ok = usage_error(o->cmd, "--backend is cpu, cuda or cpu-staged, not '%s'", v) == 0;
    } else if (GROUP('r') && !strcmp(key, "--overlap")) {
      o->serial_comm = !strcmp(v, "off");
      if (strcmp(v, "on") && strcmp(v, "off")) ok = usage_error(o->cmd, "--overlap is on or off, not '%s'", v) == 0;
    } else if (GROUP('r') && !strcmp(key, "--comm")) {
      o->comm = v;
      if (strcmp(v, "auto") && strcmp(v, "host") && strcmp(v, "nccl"))
        ok = usage_error(o->cmd, "--comm is auto, host or nccl, not '%s'", v) == 0;
    } else if (GROUP('r') && !strcmp(key, "--comm-timeout"))
      ok = opt_number(o->cmd, key, v, 0.1, 1e7, &o->comm_timeout);
    else if (GROUP('r') && !strcmp(key, "--quiet"))
      o->quiet = true;
    else if (GROUP('r') && !strcmp(key, "--profile"))
      o->profile = true;
    else if (GROUP('r') && !strcmp(key, "--trace"))
      o->trace = v;
    else if (GROUP('r') && !strcmp(key, "--save-params"))
      o->save_params = v;
    else if (GROUP('r') && !strcmp(key, "--checkpoint-dir"))
      o->checkpoint_dir = v;
    else if (GROUP('r') && !strcmp(key, "--checkpoint-every")) {
      ok = opt_integer(o->cmd, key, v, 1, 1e9, &n);
      o->checkpoint_every = (int)n;
    } else if (GROUP('r') && !strcmp(key, "--keep")) {
      ok = opt_integer(o->cmd, key, v, 1, 1e6, &n);
      o->keep = (int)n;
    } else if (GROUP('r') && !strcmp(key, "--resume"))
      o->resume = v;
    else if (GROUP('r') && !strcmp(key, "--init-from"))
      o->init_from = v;
    else if (GROUP('l') && !strcmp(key, "--layout"))
      o->layout = v;
    else if (GROUP('x') && !strcmp(key, "--rank")) {
      ok = opt_integer(o->cmd, key, v, 0, 1e6, &n);
      o->rank = (int)n;
    } else if (GROUP('o') && (!strcmp(key, "-o") || !strcmp(key, "--out")))
      o->out = v;
    else if (GROUP('d') && !strcmp(key, "--dump"))
      o->dump = true;
    else if (GROUP('d') && !strcmp(key, "--dump-training"))
      o->dump_training = true;
    else
      known = false;
#undef GROUP
    (void)x;
    if (!known) {
      usage_error(o->cmd, "unknown option '%s'", key);
      return false;
    }
    if (!ok) return false;
  }
  if ((o->checkpoint_every || o->keep) && !o->checkpoint_dir)
    return usage_error(o->cmd, "--checkpoint-every and --keep need --checkpoint-dir") == 0;
  if (o->resume && o->init_from)
    return usage_error(o->cmd, "--resume continues a run, --init-from starts one: give one of them") == 0;
  return true;
}

/* The model's path; NULL after the usage error when none is given. */
static const char *model_path(Opts *o, const char *dflt) {
  if (!o->model) o->model = dflt;
  if (!o->model)
    usage_error(o->cmd, "which model? give a .graph file or a shipped model name (gpt, mlp, bert, moe, llama)");
  return o->model ? model_resolve(o->model) : NULL;
}

static void free_opts(Opts *o) { free(o->elab.sets); }

int cmd_check(int argc, char **argv) {
  Opts o = {.cmd = "check"};
  if (wants_help(argc, argv)) {
    printf("usage: carve check MODEL [--preset NAME] [--set dim=N,...] [--dump] [--dump-training]\n\n"
           "Parses MODEL (a .graph file or a shipped model: gpt, mlp, bert, moe, llama), binds its dims,\n"
           "checks every shape, differentiates it, and prints parameters, FLOPs of one training step,\n"
           "activation memory and op counts. --dump prints the forward graph, --dump-training the\n"
           "whole training graph.\n");
    return 0;
  }
  if (!parse_opts(argc, argv, "md", &o)) return free_opts(&o), 2;
  const char *path = model_path(&o, NULL);
  Front f = {
      .path = path, .eo = &o.elab, .dump = o.dump ? stdout : NULL, .dump_training = o.dump_training ? stdout : NULL};
  Graph *g = path ? frontend_training(&f, stderr) : NULL;
  if (g) {
    Summary s;
    summarize(g, &s);
    summary_print(g, &s, stdout);
  }
  free_opts(&o);
  return g ? 0 : 1;
}

/* Without --precision: bf16 where the run's backend has bf16 units. */
static void default_precision(Opts *o) {
  if (o->precision_set) return;
  char why[256];
  Backend *b = backend_open(o->backend, why, sizeof why);
  o->train.precision = b && b->bf16_fast ? PREC_BF16 : PREC_FP32;
  if (b) b->close(b);
}

/* Model -> one rank's program (compile_program); *graph gets the training graph. */
static Program *compile(Opts *o, const char *dflt, const char *dflt_preset, Graph **graph) {
  default_precision(o);
  if (!o->model && dflt && !o->elab.preset) o->elab.preset = dflt_preset;
  const char *path = model_path(o, dflt);
  return path ? compile_program(path, &o->elab, &o->train, o->seed, graph, stderr) : NULL;
}

/* --layout TEXT -> Layout; without mb=, the microbatches of o->train. */
static bool layout_parse(Opts *o, Layout *L) {
  Manual m;
  if (!manual_parse(o->layout, "--layout", &m, stderr)) return false;
  *L = layout_of_manual(&m, o->train.microbatches);
  return true;
}

bool rank_file_write(const Program *p, void *files) {
  RankFiles *F = files;
  if (F->written++ == 0 && mkdir(F->dir, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "carve: error: cannot create '%s': %s\n", F->dir, strerror(errno));
    return false;
  }
  if (p->arena_bytes > F->arena) F->arena = p->arena_bytes;
  if (p->rank == 0) F->nbufs = p->nbufs, F->ninit = p->ninit, F->nstep = p->nstep;
  return program_write(p, arena_printf("%s/.rank%d.prog.staged", F->dir, p->rank), stderr);
}

const char *staged_plan(const char *dir) { return arena_printf("%s/.plan.json.staged", dir); }

/* Removes DIR's rank programs (rankN.prog) numbered from `from` on, or with staged every staged one
   (.rankN.prog.staged) and what a killed writer left of one (its temporary ..rankN.prog.staged.XXXXXX). */
static void remove_ranks(const char *dir, bool staged, int from) {
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d));) {
    const char *n = e->d_name + (staged && !strncmp(e->d_name, "..", 2)); /* a temporary: its name after the dot */
    int r, end = 0;
    if (sscanf(n, staged ? ".rank%d.prog.staged%n" : "rank%d.prog%n", &r, &end) == 1 && r >= from &&
        (!n[end] || (n != e->d_name && n[end] == '.')))
      remove(arena_printf("%s/%s", dir, e->d_name));
  }
  if (d) closedir(d);
}

bool rank_files_commit(const char *dir, int world, bool plan, bool ok) {
  char why[128];
  for (int r = -1; r < world && ok; r++) { /* first every place free (nothing moved yet), plan.json at -1 */
    const char *to = r < 0 ? arena_printf("%s/plan.json", dir) : arena_printf("%s/rank%d.prog", dir, r);
    if ((r >= 0 || plan) && !output_free(to, why, sizeof why)) {
      fprintf(stderr, "carve: error: cannot write %s'%s': %s\n", r < 0 ? "" : "program ", to, why);
      ok = false;
    }
  }
  for (int r = 0; r < world && ok; r++) {
    const char *to = arena_printf("%s/rank%d.prog", dir, r);
    if (!rename_into_place(arena_printf("%s/.rank%d.prog.staged", dir, r), to)) {
      fprintf(stderr, "carve: error: cannot put program '%s' in place: %s\n", to, strerror(errno));
      ok = false;
    }
  }
  if (ok) remove_ranks(dir, false, world);
  const char *pj = arena_printf("%s/plan.json", dir);
  if (ok && plan && !rename_into_place(staged_plan(dir), pj)) {
    fprintf(stderr, "carve: error: cannot put '%s' in place: %s\n", pj, strerror(errno));
    ok = false;
  }
  remove_ranks(dir, true, 0);
  if (!ok && plan) remove(staged_plan(dir));
  if (ok) sync_dir(dir);
  return ok;
}

/* Model -> per-rank programs of a layout, written into F->dir one at a
   time; *world gets their count. */
static bool compile_ranks(Opts *o, RankFiles *F, int *world) {
  Layout L;
  if (!layout_parse(o, &L)) return false;
  if (!o->model) return usage_error(o->cmd, "which model? give a .graph file or a shipped model name") == 0;
  *world = layout_world(&L);
  default_precision(o);
  return compile_layout(model_resolve(o->model), &o->elab, &o->train, o->seed, &L, rank_file_write, F, stderr);
}

static void print_train_help(const char *cmd, const char *args, const char *what) {
  printf("usage: carve %s %s\n\n%s\n\n", cmd, args, what);
  printf("model options:\n  --preset NAME        a size preset from the model file\n"
         "  --set dim=N,...      override dims (repeatable)\n"
         "training options:\n  --optimizer adamw|sgd  (default adamw)\n  --lr X (1e-3)  --wd X (0.1)  "
         "--beta1 X (0.9)  --beta2 X (0.95)  --eps X (1e-8)\n  --momentum X (0.9, sgd)  --clip X (1.0; 0 turns "
         "clipping off)  --warmup N (0)\n  --microbatches N (1): gradient accumulation, N must divide batch\n"
         "  --precision fp32|bf16: bf16 is mixed precision (f32 master weights, optimizer state and\n"
         "      gradient sums; bf16 activations and products with f32 accumulation); default bf16\n"
         "      where this machine has bf16 matrix units, else fp32\n"
         "  --seed N (1234): parameter initialisation and data\n");
}

static void print_run_help(void) {
  printf("run options:\n  --steps N (10): the step the run ends after (a resumed run continues up to it)\n"
         "  --data FILE (a token file from 'carve data'; default: synthetic)\n"
         "  --log-every N (10)  --quiet  --profile (time by instruction kind)  --trace FILE (the last step)\n"
         "  --comm-timeout S (300): under mpirun, the seconds a rank waits for others in any one exchange;\n"
         "      past it the job ends, naming the instruction and the ranks that did not answer\n"
         "  --overlap on|off (on): under mpirun, communication on its own thread beside the compute that\n"
         "      does not need it; off runs each transfer in turn on the step's thread\n"
         "  --backend cpu|cuda|cpu-staged (cpu): what runs the kernels; cuda needs a GPU and a carve built\n"
         "      with CUDA; cpu-staged is the CPU with its memory reached as a GPU's is (for tests)\n"
         "  --comm auto|host|nccl (auto): how ranks exchange data; nccl (cuda backend, a carve built with\n"
         "      NCCL, one GPU per rank) moves GPU memory directly; host goes through MPI on host memory\n"
         "      (staged from the GPU); auto takes nccl where it can and says why when it cannot\n"
         "checkpoints (docs/checkpoints.md):\n"
         "  --checkpoint-dir CK  write checkpoints to CK/step-N (parameters, optimizer state, step) after\n"
         "      the last step and, with --checkpoint-every N, after every N steps; each is complete or absent\n"
         "  --keep K (3)         keep the newest K checkpoints\n"
         "  --resume CK          continue from checkpoint folder CK, or the newest checkpoint in CK (when CK\n"
         "      is --checkpoint-dir and holds none yet, start at step 1); a checkpoint of another plan or\n"
         "      number of ranks is resharded onto this one\n"
         "  --init-from FILE     start from the parameters of a safetensors file (from 'carve export' or\n"
         "      another tool: tensors named as carve names its parameters) or a checkpoint folder\n");
}

int cmd_compile(int argc, char **argv) {
  Opts o = {.cmd = "compile"};
  if (wants_help(argc, argv)) {
    print_train_help("compile", "MODEL -o DIR [options]",
                     "Compiles MODEL into a program directory: DIR/rank0.prog, a versioned text program\n"
                     "that 'carve run DIR' executes and 'carve explain DIR' prints.");
    printf("distribution:\n  --layout \"dp=2,tp=2,pp=2,mb=4,schedule=1f1b,zero=1,recompute=full\"\n"
           "      one program per rank (DIR/rankN.prog, rank = (stage x dp + replica) x tp + position):\n"
           "      dp data-parallel replicas of a pp-stage pipeline, each replica's tensors split over tp\n"
           "      ranks (as the planner splits them), mb microbatches per replica, schedule gpipe, 1f1b,\n"
           "      interleaved or zb-h1, ZeRO stage 0-3, recompute none, selective (the attention\n"
           "      probabilities) or full. Run it with\n"
           "      mpirun -np (dp x tp x pp) carve run DIR\n");
    return 0;
  }
  if (!parse_opts(argc, argv, "mtol", &o)) return free_opts(&o), 2;
  if (!o.out) return free_opts(&o), usage_error("compile", "where to? give -o DIR");
  int world = 1;
  RankFiles F = {.dir = o.out};
  Program *single = NULL;
  bool ok = o.layout ? compile_ranks(&o, &F, &world)
                     : (single = compile(&o, NULL, NULL, NULL)) && rank_file_write(single, &F);
  /* put in place together, a stale program of an earlier, larger layout removed; a refused plan's (one that
     would deadlock on a rendezvous transport) never */
  if (F.written) ok = rank_files_commit(o.out, world, false, ok);
  char a[32];
  if (ok && world == 1)
    printf("wrote %s/rank0.prog: %d buffers, %d + %d instructions, arena %s\n", o.out, F.nbufs, F.ninit, F.nstep,
           fmt_bytes((double)F.arena, a, sizeof a));
  else if (ok)
    printf("wrote %s/rank0.prog .. rank%d.prog: %d ranks, largest arena %s; run with mpirun -np %d carve run %s\n",
           o.out, world - 1, world, fmt_bytes((double)F.arena, a, sizeof a), world, o.out);
  free_opts(&o);
  return ok ? 0 : 1;
}

/* A program path: a file, or a directory holding rankN.prog. */
static Program *load_program(const char *arg, int rank, FILE *err) {
  struct stat st;
  const char *path = arg;
  if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode)) path = arena_printf("%s/rank%d.prog", arg, rank);
  return program_read(path, err);
}

/* A plan directory: the planner's predictions (step time, memory) set
 * against what ran. No plan.json: nothing to say; one that is not a valid
 * plan: a warning. */
static void print_prediction(const char *dir, double measured, double peak) {
  const char *path = arena_printf("%s/plan.json", dir);
  struct stat st;
  if (stat(path, &st) != 0) return;
  char why[512];
  const Json *plan = plan_read(path, why, sizeof why);
  if (!plan) {
    fprintf(stderr, "carve: warning: %s: %s; no prediction to compare with\n", path, why);
    return;
  }
  double predicted = json_num(plan, "predicted_step_s", 0), memory = json_num(plan, "memory_per_device_bytes", 0);
  printf("predicted step %.1f ms (%s), measured %.1f ms: measured / predicted = %.2f\n", predicted * 1e3, path,
         measured * 1e3, measured / predicted);
  char a[32], b[32];
  if (memory > 0 && peak > 0)
    printf("predicted memory per device %s, measured peak %s (%.0f bytes): measured / predicted = %.3f\n",
           fmt_bytes(memory, a, sizeof a), fmt_bytes(peak, b, sizeof b), peak, peak / memory);
}

static int run_program(Opts *o, const Program *p, Transport *net) {
  TokenData *td = NULL;
  char *quiet_text = NULL; /* every rank reads the same file: rank 0 speaks for them */
  size_t quiet_len = 0;
  FILE *err = net->rank == 0 ? stderr : open_memstream(&quiet_text, &quiet_len);
  bool ok = !o->data || (td = tokens_read(o->data, err));
  if (err != stderr) fclose(err);
  free(quiet_text);
  if (ok && td && !p->vocab) {
    fprintf(stderr, "carve: error: --data given, but the model has no token input (~ tokens(vocab))\n");
    ok = false;
  }
  if (ok && o->precision_set && o->train.precision != p->precision) {
    if (net->rank == 0)
      fprintf(stderr, "carve: error: the program was compiled for %s, not %s: recompile it with --precision %s\n",
              precision_name(p->precision), precision_name(o->train.precision), precision_name(o->train.precision));
    ok = false;
  }
  if (!net->agree(net, ok)) return tokens_free(td), 1;
  if (o->comm_timeout > 0) net->timeout = o->comm_timeout;
  RunOptions ro = {.steps = o->steps,
                   .data = td,
                   .log_every = o->log_every,
                   .quiet = o->quiet,
                   .profile = o->profile,
                   .net = net,
                   .save_params = o->save_params,
                   .trace = o->trace,
                   .checkpoint_dir = o->checkpoint_dir,
                   .checkpoint_every = o->checkpoint_every,
                   .checkpoint_keep = o->keep ? o->keep : 3,
                   .resume = o->resume,
                   .init_from = o->init_from,
                   .backend_name = o->backend,
                   .serial_comm = o->serial_comm,
                   .comm_name = o->comm};
  if (!o->quiet && net->rank == 0) {
    printf("training %s: %d steps on %s", p->model, o->steps, td ? td->path : "synthetic data");
    if (net->world > 1) printf(", %d ranks", net->world);
    printf(", %s", precision_describe(p->precision, false));
    printf("\n");
    fflush(stdout);
  }
  double measured = 0, peak = 0;
  ro.step_s = &measured;
  ro.peak_bytes = &peak;
  int rc = runtime_run(p, &ro);
  tokens_free(td);
  if (net->rank == 0 && rc == 0 && measured > 0 && !o->quiet) print_prediction(o->model, measured, peak);
  return rc;
}

int cmd_run(int argc, char **argv) {
  Opts o = {.cmd = "run"};
  if (wants_help(argc, argv)) {
    printf("usage: carve run DIR|FILE [options]\n       mpirun -np N carve run DIR [options]\n\n"
           "Runs a program made by 'carve compile'. Under mpirun each rank runs DIR/rankN.prog;\n"
           "before the first step every rank checks its program (version, checksum, world size,\n"
           "buffers, data) and all stop together, with the failing rank's message, if one fails.\n\n");
    print_run_help();
    printf("  --precision fp32|bf16  refuse a program compiled in the other precision\n"
           "  --save-params PATH   after the run, each rank writes its parameters to PATH.rankN\n"
           "  --trace FILE         a Chrome/Perfetto trace of the last step: every rank's instructions\n");
    return 0;
  }
  Transport *net = transport_open(&argc, &argv);
  int rc = 1;
  if (!parse_opts(argc, argv, "r", &o))
    rc = 2;
  else if (!o.model)
    rc = usage_error("run", "which program? give the directory from 'carve compile'");
  if (rc == 2) {
    net->close(net);
    return free_opts(&o), 2;
  }
  /* a rank without a program is most often a run with more ranks than the
     plan: say that once, rather than each extra rank's missing file */
  char *why = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&why, &len);
  Program *p = load_program(o.model, net->rank, m);
  fclose(m);
  int world = (int)net->max(net, p ? p->world : 0);
  if (world > 0 && world != net->world) {
    if (net->rank == 0)
      fprintf(stderr, "carve: error: %s holds a plan for %d rank%s, but this run has %d: start it with mpirun -np %d\n",
              o.model, world, world == 1 ? "" : "s", net->world, world);
  } else {
    fputs(why, stderr);
    if (net->agree(net, p != NULL)) rc = run_program(&o, p, net);
  }
  free(why);
  net->close(net);
  free_opts(&o);
  return rc;
}

int cmd_train(int argc, char **argv) {
  Opts o = {.cmd = "train"};
  if (wants_help(argc, argv)) {
    print_train_help("train", "[MODEL] [options]",
                     "Checks, compiles and trains MODEL on this machine's CPU, printing the model summary\n"
                     "and the loss per step. Without MODEL: the gpt model at preset gpt-tiny.");
    print_run_help();
    return 0;
  }
  if (!parse_opts(argc, argv, "mtr", &o)) return free_opts(&o), 2;
  Graph *g = NULL;
  Program *p = compile(&o, "gpt", "gpt-tiny", &g);
  int rc = 1;
  if (p) {
    if (!o.quiet) {
      Summary s;
      summarize(g, &s);
      summary_print(g, &s, stdout);
      if (o.train.microbatches > 1)
        printf("  (per microbatch: a step runs %d microbatches of batch %lld)\n", o.train.microbatches,
               (long long)graph_dim(g, "batch", 0));
    }
    Transport *net = transport_local();
    rc = run_program(&o, p, net);
    net->close(net);
  }
  free_opts(&o);
  return rc;
}

int cmd_explain(int argc, char **argv) {
  Opts o = {.cmd = "explain"};
  if (wants_help(argc, argv)) {
    printf("usage: carve explain DIR|FILE [--rank N]\n\nPrints a compiled program: its buffers (kind, shape, arena "
           "offset),\nits rank groups, and every instruction of its init and step sections, with buffer names.\n"
           "--rank N (0): which rank's program of a directory.\n");
    return 0;
  }
  if (!parse_opts(argc, argv, "x", &o)) return free_opts(&o), 2;
  if (!o.model) return free_opts(&o), usage_error("explain", "which program? give a directory or a .prog file");
  Program *p = load_program(o.model, o.rank, stderr);
  if (p) program_explain(p, stdout);
  free_opts(&o);
  return p ? 0 : 1;
}
