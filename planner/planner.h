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
  double flops_f32;       /* peak FLOP/s per device */
  double flops_bf16;      /* peak FLOP/s per device at 16-bit (0: none) */
  double memory;          /* bytes per device */
  double mem_bandwidth;   /* bytes/s per device */
  double intra_bandwidth; /* bytes/s per device, one direction, inside a node */
  double intra_latency;   /* seconds */
  double inter_bandwidth; /* bytes/s per device, one direction, across nodes */
  double inter_latency;   /* seconds */
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
  bool inter[2]; /* the axis crosses nodes */
  double flops;  /* per device, at the planned precision */
  double mem_bw, memory;
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
const char *spec_str(const Spec *s, char *buf, size_t n); /* "S0 R R" */
const char *spec_dim_str(uint8_t bits);                   /* "R", "S0", "S1", "S01" */

/* Collectives, by kind. */
typedef enum { COLL_ALL_REDUCE, COLL_ALL_GATHER, COLL_REDUCE_SCATTER, COLL_ALL_TO_ALL, COLL_KINDS } CollKind;
extern const char *const coll_names[COLL_KINDS];
typedef enum { PHASE_FORWARD, PHASE_BACKWARD, PHASE_UPDATE } CommPhase;
extern const char *const phase_names[3];

double coll_time(const Mesh *m, CollKind k, int axis, double bytes);

typedef struct PlanOptions {
  int zero;          /* 0..3, or -1: the smallest stage that fits */
  bool force_dp;     /* shard only the dim named "batch" */
  int batch_axis;    /* -1, or the mesh axis the "batch" dim must use */
  bool mixed;        /* 16-bit compute and activations, fp32 master weights */
  double time_limit; /* seconds for the solver */
  bool quiet;
} PlanOptions;

/* One collective of the plan, aggregated over identical ones. */
typedef struct Comm {
  CollKind kind;
  int axes;     /* bit mask of mesh axes */
  double bytes; /* per device, per occurrence */
  int count;    /* occurrences per step */
  CommPhase phase;
  const char *what; /* the tensor it moves */
} Comm;

/* The result of the intra-operator pass. */
typedef struct Plan {
  const Graph *g;
  const Cluster *cluster;
  Mesh mesh;
  PlanOptions opt;
  int zero;     /* the stage used */
  Spec *layout; /* per forward node: its output's sharding */
  double compute_s, comm_s, objective;
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
/* Tries every n0 x n1 mesh of all devices and keeps the fastest plan. */
Plan *plan_best_mesh(const Graph *g, const Cluster *c, const PlanOptions *o, FILE *log, FILE *err);
void plan_report(const Plan *p, FILE *out);
void plan_json(const Plan *p, FILE *out);

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
/* Minimum objective over all assignments within the memory limit, or -1 if
 * none fits; sets *combos to the number of assignments tried. */
double ilp_brute_force(const IlpInstance *inst, double *combos);

#endif
