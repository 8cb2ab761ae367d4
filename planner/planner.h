/* planner.h: clusters, logical meshes, sharding, the cost model and the
 * intra-operator ILP. */
#ifndef CARVE_PLANNER_H
#define CARVE_PLANNER_H
#include "carve.h"

/* ======================================================================
 * planner/cluster.c: the machines carve plans for
 * ====================================================================== */

typedef struct Cluster {
  const char *name;   /* "dgx-a100" */
  const char *path;   /* the file it came from */
  const char *device; /* "A100 SXM 80GB" */
  int nodes;
  int devices_per_node;
  double flops_f32;     /* peak FLOP/s per device */
  double flops_bf16;    /* peak FLOP/s per device at 16-bit (0: none) */
  double flops_vector;  /* FLOP/s of elementwise math (gelu, exp, norms) per device (0: the peak) */
  double memory;        /* bytes per device */
  double mem_bandwidth; /* bytes/s per device */
  /* the same two for bf16 programs, where the runtime's elementwise kernels
     read and write bf16 (0: as in f32) */
  double flops_vector_bf16, mem_bandwidth_bf16;
  double workspace;       /* bytes per device the runtime holds besides the program's buffers (0: none) */
  double intra_bandwidth; /* bytes/s per device, one direction, inside a node */
  double intra_latency;   /* seconds */
  double inter_bandwidth; /* bytes/s per device, one direction, across nodes */
  double inter_latency;   /* seconds */
  /* compute efficiency (planner/gemm.c; 0: the defaults there) */
  double gemm_efficiency;     /* fraction of the 16-bit peak a large square product reaches */
  double gemm_efficiency_f32; /* the same at f32 */
  double gemm_half_dim;       /* a product dim at which the product runs at half that */
  double best_mfu;            /* best published MFU of the device in training (0: none known) */
  double overlap_cost;        /* of communication run beside compute, the fraction of its time the compute
                                 loses (0: none, a separate engine; CPU ranks share their cores with it) */
  double pass_bandwidth;      /* bytes/s per device of the per-parameter passes (gradient accumulation, the
                                 optimizer update; 0: 80% of mem_bandwidth) */
} Cluster;

/* A shipped cluster name (clusters/NAME.cluster) or a path. Errors are
 * located (file:line: error: ...) and return NULL. */
Cluster *cluster_load(const char *name_or_path, FILE *err);
/* --nodes / --devices-per-node: 0 keeps the file's value. */
bool cluster_resize(Cluster *c, int nodes, int devices_per_node, FILE *err);
void cluster_print(const Cluster *c, FILE *out);
int cluster_devices(const Cluster *c);

/* ======================================================================
 * planner/shard.c: logical meshes, sharding specs, strategies, costs
 * ====================================================================== */

/* A logical mesh: n[0] x n[1] devices, row-major over the cluster's first
 * n[0]*n[1] devices. Axis 1 groups consecutive devices; each axis takes the
 * bandwidth and latency of the slowest link its groups cross. */
typedef struct Mesh {
  int n[2];
  double bw[2], lat[2];
  bool inter[2];    /* the axis crosses nodes */
  double flops;     /* per device, at the planned precision */
  double vec_flops; /* per device, elementwise math */
  double mem_bw, memory;
  double row_bw, row_elem;    /* row-wise ops (norms, softmax, cross-entropy): bytes/s, bytes per element */
  double pass_bw;             /* the per-parameter passes (accumulation, update): bytes/s */
  double both_bw;             /* a collective over both axes at once: its ring's bandwidth (mesh.c) */
  double gemm_eff, gemm_half; /* planner/gemm.c: a large product's efficiency, the half-efficiency dim */
  double overlap_cost;        /* Cluster.overlap_cost */
  double copy_bw, copy_lat;   /* the link to the other pipeline stages' copies of a tied parameter (Comm.copies) */
} Mesh;

bool mesh_make(const Cluster *c, int n0, int n1, bool mixed, Mesh *m, FILE *err);
/* Parses "AxB" or "N" (1 x N). */
bool mesh_parse(const char *s, int *n0, int *n1);

/* A sharding spec: per tensor dim, bit a set = split along mesh axis a.
 * 0 = R, 1 = S0, 2 = S1, 3 = S01. */
typedef struct Spec {
  int rank;
  uint8_t d[MAXRANK];
} Spec;
/* A whole tensor's bytes as the programs hold its values: int32 ones 4 an element, the others 2 in mixed
   precision, else 4. */
static inline double value_bytes(const Node *n, bool mixed) {
  return (double)shape_numel(&n->shape) * (n->dtype == DT_I32 || !mixed ? 4 : 2);
}
static inline bool spec_eq(const Spec *a, const Spec *b) {
  if (a->rank != b->rank) return false;
  for (int d = 0; d < a->rank; d++)
    if (a->d[d] != b->d[d]) return false;
  return true;
}
const char *spec_str(const Spec *s, char *buf, size_t n); /* "S0 R R" */
const char *spec_dim_str(uint8_t bits);                   /* "R", "S0", "S1", "S01" */

/* Collectives, by kind. */
typedef enum { COLL_ALL_REDUCE, COLL_ALL_GATHER, COLL_REDUCE_SCATTER, COLL_ALL_TO_ALL, COLL_KINDS } CollKind;
extern const char *const coll_names[COLL_KINDS];
typedef enum { PHASE_FORWARD, PHASE_BACKWARD, PHASE_UPDATE } CommPhase;
extern const char *const phase_names[3];

double coll_time(const Mesh *m, CollKind k, int axis, double bytes);
double coll_time_axes(const Mesh *m, CollKind k, int axes, double bytes);
/* The fraction of peak FLOP/s and memory bandwidth the cost model takes
 * every op but a product to reach (products: gemm_efficiency). */
#define PEAK_FRACTION 0.8

/* gemm.c: an einsum as a batched matrix product, and the fraction of peak
 * FLOP/s it reaches on a mesh's devices (at most mesh.gemm_eff). */
typedef struct GemmShape {
  double batch, m, n, k;
} GemmShape;
#define GEMM_TILE 64             /* product tile edge quantised to (M and N) */
#define GEMM_EFF_DEFAULT 0.8     /* a large square product (docs/cost-model.md) */
#define GEMM_HALF_DIM_DEFAULT 32 /* a dim at which a product runs at half of that */
double gemm_efficiency(const Mesh *me, const GemmShape *s);
/* A large square product's efficiency: no product does better (bounds use it). */
double gemm_best_efficiency(const Cluster *c, bool mixed);
/* From labels (operand a, operand b, result) and each label's size. */
GemmShape gemm_shape(const char *a, const char *b, const char *out, const double *size_of_label);
/* A two-operand einsum node's shape with its work split `shards` ways (the
   split taken on the larger of batch and M). */
GemmShape node_gemm_shape(const Graph *g, const Node *v, double shards);

typedef struct PlanOptions {
  int zero;             /* 0..3, or -1: the smallest stage that fits */
  bool force_dp;        /* shard only the dim named "batch" */
  int batch_axis;       /* -1, or the mesh axis the "batch" dim must use */
  bool mixed;           /* 16-bit compute and activations, fp32 master weights */
  double time_limit;    /* seconds for the solver */
  bool quiet;           /* no explanation of an infeasible problem (searches) */
  int inflight;         /* microbatches whose activations are kept at once (pipelines); 0 means 1 */
  int microbatches;     /* the graph is one of this many microbatches of a step; 0 means 1 */
  double step_mbs;      /* the step's length in this graph's microbatch times (0: microbatches): what
                           happens once per step (gradient syncs, the optimizer update) weighs
                           1/step_mbs in the objective (plan_once_weight) */
  int node_limit;       /* stop the solver after this many branch-and-bound nodes (0: none); searches
                           use it so that a stage plan under tight memory costs a bounded, machine-
                           independent effort, and keep the best plan found with its gap */
  bool lowerable;       /* only strategies the per-rank code generator lowers: no split of a normalised
                           dim, an embedding's vocabulary, a max-reduced dim or a MoE gate, no all-to-all */
  bool batch_not_axis1; /* the batch dim never uses mesh axis 1 (tensor parallelism proper) */
  bool no_scatter;      /* partial sums are all-reduced, never reduce-scattered into a split of the output
                           (no sequence parallelism: a manual plan's sp=0, and compile --layout's tp plan) */
  bool seq_scatter;     /* sp=1: partial sums over mesh axis 1 of a product whose output has a "seq" dim are
                           reduce-scattered along it (the sequence-parallel regions of Korthikanti et al.) */
  bool serial_comm;     /* gradient syncs after the backward pass, not beside it (overlap=off): priced in full */
  double cutoff;        /* a search's bound (0: none): a plan whose objective cannot get below it is of
                           no use, and its solve stops as soon as the solver's lower bound reaches it */
} PlanOptions;

/* One collective of the plan, aggregated over identical ones. */
typedef struct Comm {
  CollKind kind;
  int axes;     /* bit mask of mesh axes */
  double bytes; /* per device, per occurrence */
  int count;    /* occurrences per step */
  CommPhase phase;
  const char *what;  /* the tensor it moves */
  bool once;         /* once per step however many microbatches (gradient sync, weight gather after the
                        update); otherwise every microbatch */
  bool summed;       /* a gradient its several readers sum before one reduction: counted once per tensor */
  const Node *param; /* a parameter's gradient reduction: the parameter; else NULL */
  double lat_share;  /* a gradient in a bucket (one all-reduce over a layer's gradients): its share of the
                        bucket's one latency; 0: a collective of its own */
  int copies;        /* > 1: a tied parameter's gradient summed over the pipeline stages holding a copy: the
                        group is the devices of `axes` (axes 0: one) on each of `copies` stages */
  bool rerun;        /* a forward op's own reduction (a partial sum, a norm's statistics): run again where the
                        forward is recomputed (full recomputation); a reshard between ops is not (the backward's
                        own resharding of forward values is listed apart, and recomputation does it instead) */
} Comm;
/* Seconds one collective takes on mesh m (planner/mesh.c); *lat, if given, gets its latency part. */
double comm_time(const Mesh *m, const Comm *c, double *lat);

/* The result of the intra-operator pass. */
typedef struct Plan {
  const Graph *g;
  const Cluster *cluster;
  Mesh mesh;
  PlanOptions opt;
  int zero;         /* the stage used */
  Spec *layout;     /* per forward node: its output's sharding */
  Spec *reads;      /* per forward op and input (node x MAXIN + k): the sharding the op reads it in */
  uint8_t *partial; /* per forward op: mesh axes its output is a partial sum over (to all-reduce) */
  bool *a2a;        /* per forward op: an MoE all-to-all strategy */
  /* How the plan moves tensors between groups of ops (for repricing boundaries it does not have,
     planner/pipeline.c): */
  Spec *kept;       /* per forward node: the layout its readers in other groups read it from (a tensor several
                       groups read: its layout variable's); else its layout */
  uint8_t *to_kept; /* per forward node: 1 moved from `layout` into `kept` once, 2 and again for the backward */
  uint8_t *edge;    /* per forward op and input (node x MAXIN + k): 1 read from `kept` by a layout edge (from
                       another group); 2 its backward reads the value again (Ctx.reread: resharded again there) */
  double compute_s, comm_s, objective;
  double microbatch_s;         /* compute and communication per microbatch, without the once-per-step costs */
  double sync_hidden_s;        /* of the once-weighted gradient sync in compute_s + comm_s, what the objective
                                  leaves out as hidden behind the backward pass (overlap; Problem.exposure) */
  double reread_s;             /* of microbatch_s: the backward pass resharding forward values again (a stage
                                  that recomputes its forward reshards them there instead) */
  double update_s;             /* the optimizer update (gradient norm, AdamW, cast), seconds per step; its
                                  plan_once_weight share is in compute_s and the objective, like a sync's */
  double fwd_frac, wgrad_frac; /* of compute + communication: the forward's share, the weight gradients' */
  double mem_params, mem_grads, mem_optim, mem_acts; /* bytes per device */
  Comm *comms;
  int ncomms;
  /* solver statistics */
  int vars, binaries, constraints, groups, nodes;
  double solve_s, gap;
  bool optimal;
} Plan;

/* Plans the training graph g on mesh m. Returns NULL after printing why
 * (no strategy fits in memory: the message gives the best plan's need). */
Plan *plan_intra(const Graph *g, const Cluster *c, const Mesh *m, const PlanOptions *o, FILE *err);
/* The tensor layouts of each strategy the pass offers op v on its own (a
   follower takes its input's instead): MAXIN + 1 specs per strategy, the
   inputs' at 0 .. nin - 1 and the output's at MAXIN. Their count, at most
   max. For checking what the planner offers against what codegen lowers. */
int plan_offers(const Graph *g, const Node *v, const Mesh *me, const PlanOptions *o, Spec *out, int max);
/* Moving a tensor of `bytes` (whole) from layout src to dst on plan pl's mesh, as between two ops: the
   collectives appended to out (at most max, *n counting them), their seconds returned. */
double plan_reshard(const Plan *pl, const Spec *src, const Spec *dst, double bytes, CommPhase phase, const char *what,
                    Comm *out, int *n, int max);
/* Tries every n0 x n1 mesh of all devices and keeps the fastest plan. */
Plan *plan_best_mesh(const Graph *g, const Cluster *c, const PlanOptions *o, FILE *log, FILE *err);
void plan_report(const Plan *p, FILE *out);
/* Seconds per step of the collectives that happen once per step however
 * many microbatches there are (Comm.once: gradient syncs, weight gathers
 * after the update). */
double plan_sync_s(const Plan *p);
/* What a once-per-step cost weighs in a stage plan's objective, which is one
   microbatch's time: 1 / the step's length in microbatch times
   (PlanOptions.step_mbs, or its microbatches). */
double plan_once_weight(const PlanOptions *o);
/* Bytes per device by collective kind in one step of `microbatches`. */
void plan_comm_bytes(const Plan *p, int microbatches, double out[COLL_KINDS]);
void plan_comms_json(const Plan *p, int microbatches, int indent, FILE *out);
void plan_json(const Plan *p, FILE *out);
/* Whether the JSON and the HTML report list forward node i: every parameter
   and input, and the main activations (einsum, embed, softmax, norm, MoE). */
bool plan_lists_tensor(const Plan *p, int i);

/* For tests: the ILP of the last plan_intra as plain arrays, and a brute
 * force over it. */
typedef struct IlpInstance {
  int nvars;
  int *ns;       /* strategies per variable */
  double **cost; /* [var][s] */
  double **mem;  /* [var][s] */
  int nedges;
  int *eu, *ev;   /* variable ids */
  double **ecost; /* [edge][su * ns[ev] + sv] */
  double mem_limit;
} IlpInstance;
const IlpInstance *plan_last_instance(void);
/* Whether the last plan_intra that returned NULL did so because a plan fits
 * but none beats PlanOptions.cutoff (then a retry with looser options that
 * cost no less is of no use either). */
bool plan_last_cut(void);
/* Warm starts for the ILPs of one search (on), or none (off, the default;
 * turning them off forgets the kept bases). With them, each LP relaxation
 * starts from the optimal basis of the last problem of the same structure:
 * the same optimum, several times faster, but where several plans tie, the
 * one returned may depend on what was solved before. */
void plan_warm_starts(bool on);
/* Minimum objective over all assignments within the memory limit, or -1 if
 * none fits; sets *combos to the number of assignments tried. */
double ilp_brute_force(const IlpInstance *inst, double *combos);

/* ======================================================================
 * planner/schedule.c: pipeline schedules as data
 * ====================================================================== */

typedef enum { SCHED_GPIPE, SCHED_1F1B, SCHED_INTERLEAVED, SCHED_ZB_H1, SCHED_KINDS } SchedKind;
extern const char *const sched_names[SCHED_KINDS]; /* "gpipe", "1f1b", "interleaved", "zb-h1" */

/* Work of one (stage, microbatch): forward, backward (input and weight
 * gradients together), or, in zero-bubble schedules, backward for the input
 * gradient (B) and for the weight gradient (W) separately. */
typedef enum { TASK_F, TASK_B, TASK_W } TaskPhase;

typedef struct Task {
  int stage; /* virtual stage 0 .. p*v-1; device = stage % p */
  int mb;    /* microbatch 0 .. m-1 */
  TaskPhase phase;
} Task;

typedef struct Schedule {
  SchedKind kind;
  int p;        /* devices (pipeline ranks) */
  int v;        /* model chunks per device (interleaved; 1 otherwise) */
  int m;        /* microbatches */
  bool split_w; /* backward split into B and W */
  int *ntasks;  /* per device */
  Task **order; /* per device: its tasks in execution order */
} Schedule;

/* Builds a schedule; NULL with a message when the combination is invalid
 * (interleaved needs v >= 2 and m a multiple of p). */
Schedule *schedule_make(SchedKind kind, int p, int m, int v, FILE *err);
/* The tasks t waits for: F(s, j) on F(s-1, j); B(s, j) on F(s, j) and
 * B(s+1, j) (the last of S stages only on its F); W(s, j) on B(s, j).
 * Returns how many (0-2). */
int task_producers(Task t, int S, Task dep[2]);
/* A dense index of (phase, stage, microbatch) for S stages, m microbatches. */
static inline int task_slot(Task t, int S, int m) { return ((int)t.phase * S + t.stage) * m + t.mb; }
/* Invariants: every (stage, mb) has exactly one F and one B (and one W when
 * split), on the device that owns the stage; on each device F precedes B
 * precedes W for each (stage, mb); and the lists can all run to completion
 * under the cross-stage dependencies (no deadlock). False and a reason. */
bool schedule_check(const Schedule *s, char *why, size_t n);
/* The largest number of microbatches whose forward ran and whose backward
 * (B) has not, on device d, over the schedule. */
int schedule_max_inflight(const Schedule *s, int d);

/* ======================================================================
 * planner/simulate.c: one training step, event by event
 * ====================================================================== */

typedef struct SimInput {
  const Schedule *sched;
  const double *t_f, *t_b, *t_w; /* per virtual stage, seconds per microbatch;
                                    t_w used only when the schedule splits W
                                    (otherwise t_b includes the weight gradient) */
  const double *t_p2p;           /* per stage boundary s -> s+1 (p*v-1 entries), seconds; may be NULL */
  const double *act_bytes;       /* per virtual stage: activations one microbatch keeps; may be NULL */
  double t_tail;                 /* after the last task of a device: gradient syncs not overlapped */
  /* Gradient reductions that start as a virtual stage's gradients become
     final in its last backward task (its weight-gradient task when the
     schedule splits W), one bucket per layer, and run one after another on
     the device's communication channel beside its compute: per virtual
     stage the seconds (NULL: none) and the buckets (NULL: one each). */
  const double *t_sync;
  const int *sync_buckets;
  double overlap_cost; /* Cluster.overlap_cost: what the compute loses of the time they overlap it */
  bool blocking_p2p;   /* a transfer holds its sender's device (a run without overlap sends in turn) */
} SimInput;

typedef struct SimEvent {
  int device;
  Task task;     /* phase TASK_F/B/W; for transfers, the task they feed */
  bool transfer; /* a point-to-point transfer rather than compute */
  double start, end;
} SimEvent;

typedef struct SimResult {
  double step_s;         /* until every device has finished, tail included */
  double sync_exposed_s; /* of the overlapped gradient reductions, the most a device waits for past its compute */
  double bubble;         /* idle fraction of device time before the tail */
  double *busy_s;        /* per device */
  double *peak_act;      /* per device: peak bytes of kept activations */
  SimEvent *events;
  int nevents;
} SimResult;

bool simulate(const SimInput *in, SimResult *out, FILE *err);
/* Chrome/Perfetto trace: one track per device, compute and transfers. */
bool sim_trace_write(const SimResult *r, const char *path, FILE *err);

/* ======================================================================
 * planner/stages.c: cutting the layers into pipeline stages
 * ====================================================================== */

/* The stage DP works on abstract costs: cost(i, j, k) is the time of one
 * microbatch (forward and backward) of layers i..j on submesh k, or a
 * negative number when that stage does not fit in memory. */
typedef double (*StageCostFn)(void *ctx, int first, int last, int submesh);

typedef struct StageProblem {
  int layers;          /* L */
  int nsub;            /* submesh choices */
  const int *sub_devs; /* devices in each submesh choice */
  int devices;         /* D: the stages' submeshes must use exactly D devices */
  int microbatches;    /* B */
  StageCostFn cost;
  void *ctx;
} StageProblem;

typedef struct Stage {
  int first, last; /* layers */
  int submesh;
  double t; /* cost(first, last, submesh) */
} Stage;

/* Minimises  sum_i t_i + (B - 1) max_i t_i  over partitions of the layers
 * into consecutive stages and a submesh per stage, using all D devices.
 * Returns the total (or -1 if nothing is feasible) and the stages. */
double stage_dp(const StageProblem *sp, Stage *out, int *nstages);
/* The same by enumeration, for tests (small L and D only). */
double stage_brute_force(const StageProblem *sp);

/* Layers of a training graph: each forward node's layer for pipelining.
 * Repeat iterations are layers; nodes before the first join it, nodes after
 * the last join it. A graph without repeat blocks is cut into `want` layers
 * of balanced FLOPs (at most its number of heavy ops). Returns the count. */
int graph_layers(const Graph *g, int want, int *layer_of);

/* The forward graph of one pipeline stage: the nodes of layers first..last.
 * A parameter or input used in the span is copied in (a tied embedding is
 * in both the first and the last stage); an activation from an earlier
 * stage becomes an input "recv:NAME". When the span does not hold the loss,
 * the loss is the sum of mse(out, "grad:NAME") over the activations later
 * stages read: a stand-in for the gradient the next stage sends back, so
 * that autodiff gives the stage's backward pass. */
Graph *stage_graph(const Graph *g, const int *layer_of, int first, int last);

/* ======================================================================
 * planner/pipeline.c: the whole plan: stages, submeshes, schedule
 * ====================================================================== */

/* Recomputation of a stage: none; selective (the attention core: the
 * scores einsum, what scales or masks them, and the softmax, re-run before
 * the backward instead of keeping the probabilities); full (the stage keeps
 * only its inputs and re-runs its whole forward). */
enum { RC_NONE, RC_SELECTIVE, RC_FULL, RC_KINDS };
extern const char *const rc_names[RC_KINDS]; /* "none", "selective", "full" */
/* The forward nodes selective recomputation re-runs (an array over g->n). */
bool *selective_nodes(const Graph *g);

typedef struct PipeStage {
  int first, last;     /* the model's layers (repeat iterations) it was planned and priced for; with
                          interleaved chunks it holds as many, in chunks (PipelinePlan.chunk_last) */
  int nodes, per_node; /* the submesh: whole nodes, or per_node devices of one */
  int device0;         /* its first device in the cluster */
  const Plan *plan;    /* the stage's intra-operator plan (one microbatch) */
  double t;            /* seconds per microbatch, forward and backward */
  double sync;         /* seconds per step: gradient sync and ZeRO gathers */
  double update;       /* seconds per step: the optimizer update, after the sync */
  double memory;       /* bytes per device with the schedule's in-flight activations */
  double p2p;          /* seconds to send one microbatch's boundary to the next stage */
  double p2p_bytes;    /* bytes per device of that boundary */
  int recompute;       /* RC_NONE, RC_SELECTIVE or RC_FULL */
  double fwd_frac;     /* of t: the forward's share (the rest is backward) ... */
  double wgrad_frac;   /* ... and, of that, the weight gradients' (ZB-H1's W) */
  double sel_bytes;    /* bytes per device and microbatch that selective recomputation does not keep */
  double sel_t;        /* seconds per microbatch to recompute them */
} PipeStage;

typedef struct PipelinePlan {
  const char *model;
  const Cluster *cluster;
  int devices;
  int microbatches;
  SchedKind schedule;
  int v; /* model chunks per device (interleaved) */
  int nstages;
  PipeStage *stages;
  int *chunk_last; /* v > 1: per virtual stage (chunk c of stage d is c x nstages + d), its last layer: the
                      layers run through the virtual stages in order, stage d's split over its chunks as
                      evenly as they go, the larger chunks first; NULL when v = 1 */
  int layers;
  double step_s, bubble;
  double model_flops; /* einsum FLOPs of one step (the whole batch) */
  double tflops_per_device, mfu;
  SimResult sim;
  bool serial_comm; /* predicted for runs without overlap (carve run --overlap off): every sync after the compute */
  int ilps;         /* intra-operator problems solved */
  double search_s;
} PipelinePlan;

/* Searches stages (the DP over layer spans and submeshes, each span's cost
 * from the intra-operator ILP), microbatch counts (powers of two that divide
 * the batch, up to 64, or `microbatches` if > 0) and the schedule (GPipe,
 * 1F1B, interleaved 1F1B with two chunks, ZB-H1, each within memory);
 * predicts the step by simulation. */
PipelinePlan *plan_pipeline(const char *model_path, const ElabOptions *eo, const Cluster *c, const PlanOptions *po,
                            int microbatches, FILE *progress, FILE *err);
/* A hand-written plan, Megatron-style: pp stages of equal layer spans, each on
 * dp x tp devices (a dp x tp mesh: tensor parallelism on axis 1, inside a
 * node when tp fits one; the batch on axis 0). Fields left 0 (or SCHED_KINDS,
 * or zero -1) are chosen by the planner. */
typedef struct Manual {
  int dp, tp, pp, mb;
  SchedKind schedule;
  int zero;
  int recompute;       /* RC_NONE, RC_SELECTIVE, RC_FULL, or -1: chosen per stage */
  const int *stage_dp; /* dp=1:2: each stage's replicas (dp is the most), NULL */
  int nstage_dp;
  bool serial_comm; /* overlap=off: gradient reductions after the backward pass (carve run --overlap off) */
  int sp;           /* sp=1: 1, sequence parallelism in the tensor-parallel regions; sp=0: -1, none; left out:
                       0, the planner's choice */
} Manual;
/* The one parser of layout text: "dp=32,tp=8,pp=2,mb=8,schedule=1f1b,zero=1,
   recompute=none" (keys left out are 0, or -1 and SCHED_KINDS: to be chosen);
   dp=1:2 gives each pipeline stage its own replicas. opt ("--manual",
   "--layout") names the option in messages. */
bool manual_parse(const char *text, const char *opt, Manual *m, FILE *err);
PipelinePlan *plan_manual(const char *model_path, const ElabOptions *eo, const Cluster *c, const PlanOptions *po,
                          const Manual *m, FILE *err);
void pipeline_report(const PipelinePlan *p, FILE *out);
/* "none", "selective", "full", or "per stage" when the stages differ. */
const char *pipeline_recompute(const PipelinePlan *p);
/* The simulation input of a pipeline plan's chosen schedule (for traces). */
bool pipeline_sim_input(const PipelinePlan *p, SimInput *in, FILE *err);
void pipeline_json(const PipelinePlan *p, FILE *out);
/* The layers stage d holds, "first-last", or each chunk's joined by commas. */
const char *pipeline_stage_layers(const PipelinePlan *p, int d);
/* The plan as a program layout, or false after writing (to err, no newline)
   why it cannot be lowered yet. stage_last: one int per stage. */
bool pipeline_layout(const PipelinePlan *p, Layout *L, int *stage_last, FILE *err);

/* ======================================================================
 * planner/html.c: the plan report as one self-contained HTML page
 * ====================================================================== */

/* Memory of a device by kind; "other" is memory whose kind is not known
   (a plan file gives a whole plan's stages as totals). */
enum { MEM_PARAMS, MEM_GRADS, MEM_OPTIM, MEM_ACTS, MEM_WORKSPACE, MEM_OTHER, MEM_KINDS };
extern const char *const mem_kind_names[MEM_KINDS];
typedef struct HtmlMemBar {
  const char *label;
  double bytes[MEM_KINDS];
} HtmlMemBar;

/* Writes the page page(ctx, f) makes to path (temp_beside, temp_commit);
   false after a message when path is a directory, a FIFO or a device, or
   cannot be written. */
bool html_write(const char *path, void (*page)(void *ctx, FILE *f), void *ctx, FILE *err);
void html_begin(FILE *f, const char *title); /* the document up to its <h1> */
void html_end(FILE *f);
void html_text(FILE *f, const char *s); /* s escaped for HTML text and attributes */
void html_heading(FILE *f, int level, const char *text, const char *note);
/* A table of strings, row after row; head may be NULL (no header row). */
void html_table(FILE *f, const char *cls, int ncols, const char *const *head, int nrows, const char *const *cells);
/* One simulated step: a row per device of the schedule, labelled. */
void html_timeline(FILE *f, const SimResult *r, int devices, const char *const *labels, bool split_w);
void html_memory(FILE *f, const HtmlMemBar *bars, int n, double capacity);
/* The whole report of a plan of one mesh, or of a whole plan. */
bool plan_html(const Plan *p, const char *path, FILE *err);
bool pipeline_html(const PipelinePlan *p, const char *path, FILE *err);

#endif
