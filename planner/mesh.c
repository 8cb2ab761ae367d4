/* mesh.c: logical meshes over a cluster, sharding specs, and the alpha-beta
 * cost of collectives on a mesh axis.
 *
 * A mesh n0 x n1 takes the cluster's first n0*n1 devices in row-major order:
 * device (i, j) is i*n1 + j. A group along axis 1 is n1 consecutive devices;
 * a group along axis 0 is n0 devices n1 apart. An axis whose groups stay
 * inside one node uses the node's links; otherwise it uses the network, the
 * slowest link it crosses. Any device count works; nothing assumes powers of
 * two.
 *
 * Collectives on an axis of n devices moving B bytes per device:
 *   all-reduce      a + 2 (n-1)/n B / bw
 *   all-gather      a +   (n-1)/n B / bw    (B: the gathered size)
 *   reduce-scatter  a +   (n-1)/n B / bw    (B: the size before scattering)
 *   all-to-all      a +   (n-1)/n B / bw */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

const char *const coll_names[COLL_KINDS] = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all"};
const char *const phase_names[3] = {"forward", "backward", "update"};

/* Do the groups of size `span` starting at multiples of `span` (or a stride
 * pattern covering `extent` devices) stay inside a node? */
static bool inside_node(int extent, int dpn) { return extent <= dpn && dpn % extent == 0; }

bool mesh_make(const Cluster *c, int n0, int n1, bool mixed, Mesh *m, FILE *err) {
  int total = cluster_devices(c);
  if (n0 < 1 || n1 < 1 || (long)n0 * n1 > total) {
    fprintf(err, "carve: error: a %dx%d mesh needs %ld devices, but cluster %s has %d (%d nodes x %d)\n", n0, n1,
            (long)n0 * n1, c->name, total, c->nodes, c->devices_per_node);
    return false;
  }
  memset(m, 0, sizeof *m);
  m->n[0] = n0, m->n[1] = n1;
  /* axis 1: n1 consecutive devices; axis 0: spans n0*n1 devices */
  m->inter[1] = !inside_node(n1, c->devices_per_node);
  m->inter[0] = !inside_node(n0 * n1, c->devices_per_node);
  /* A group that crosses nodes with k of its devices on each node runs its
     collective as k rings at once, one per device's network link (NCCL's
     rings, one per NIC: each node's share of the traffic leaves through k
     links), so its bandwidth is k links', at most the node's own links'. */
  int dpn = c->devices_per_node;
  int per_node[2] = {n1 < dpn && dpn % n1 == 0 ? (n0 < dpn / n1 ? n0 : dpn / n1) : 1, n1 < dpn ? n1 : dpn};
  for (int a = 0; a < 2; a++) {
    m->bw[a] = m->inter[a] ? fmin(c->intra_bandwidth, per_node[a] * c->inter_bandwidth) : c->intra_bandwidth;
    m->lat[a] = m->inter[a] ? c->inter_latency : c->intra_latency;
  }
  int both = n0 * n1 < dpn ? n0 * n1 : dpn; /* the whole mesh's devices per node */
  m->both_bw = m->inter[0] || m->inter[1] ? fmin(c->intra_bandwidth, both * c->inter_bandwidth) : c->intra_bandwidth;
  m->flops = mixed && c->flops_bf16 > 0 ? c->flops_bf16 : c->flops_f32;
  m->vec_flops = c->flops_vector > 0 ? c->flops_vector : m->flops;
  m->mem_bw = c->mem_bandwidth;
  if (mixed && c->flops_vector_bf16 > 0) m->vec_flops = c->flops_vector_bf16; /* what bf16 kernels achieve */
  m->row_bw = m->mem_bw, m->row_elem = mixed ? 2 : 4;
  m->pass_bw = c->pass_bandwidth > 0 ? c->pass_bandwidth : PEAK_FRACTION * c->mem_bandwidth;
  m->overlap_cost = c->overlap_cost;
  m->copy_bw = c->intra_bandwidth, m->copy_lat = c->intra_latency; /* the caller knows where other stages are */
  if (mixed && c->mem_bandwidth_bf16 > 0) m->mem_bw = c->mem_bandwidth_bf16;
  /* a measured bf16 rate is a CPU backend's: it runs row-wise ops on rows
     widened to f32, at the f32 rate */
  if (mixed && c->mem_bandwidth_bf16 > 0) m->row_elem = 4;
  m->memory = c->memory - c->workspace; /* what the program's buffers may use */
  m->gemm_eff = gemm_best_efficiency(c, mixed);
  m->gemm_half = c->gemm_half_dim > 0 ? c->gemm_half_dim : GEMM_HALF_DIM_DEFAULT;
  return true;
}

bool mesh_parse(const char *s, int *n0, int *n1) {
  char *end;
  long a = strtol(s, &end, 10);
  if (end == s || a < 1 || a > 1000000) return false;
  if (*end == 0) {
    *n0 = 1, *n1 = (int)a;
    return true;
  }
  if (*end != 'x' && *end != 'X') return false;
  const char *t = end + 1;
  long b = strtol(t, &end, 10);
  if (end == t || *end || b < 1 || b > 1000000) return false;
  *n0 = (int)a, *n1 = (int)b;
  return true;
}

const char *spec_dim_str(uint8_t bits) {
  static const char *const names[4] = {"R", "S0", "S1", "S01"};
  return names[bits & 3];
}

const char *spec_str(const Spec *s, char *buf, size_t n) {
  size_t len = 0;
  buf[0] = 0;
  for (int i = 0; i < s->rank && len < n; i++)
    len += (size_t)snprintf(buf + len, n - len, "%s%s", i ? " " : "", spec_dim_str(s->d[i]));
  if (s->rank == 0) snprintf(buf, n, "scalar");
  return buf;
}

/* A ring of n devices moving `bytes` each at bandwidth bw, latency lat. */
static double ring(CollKind k, int n, double bytes, double bw, double lat) {
  if (n <= 1 || bytes <= 0) return 0;
  double f = (double)(n - 1) / n * bytes / bw;
  return lat + (k == COLL_ALL_REDUCE ? 2 * f : f);
}

/* A group of n devices (and the link *bw, *lat, 0 for none) widened by the
   devices of the mesh axes in `axes`: its size, the slowest link, the
   largest latency. */
static int widen(const Mesh *m, int axes, int n, double *bw, double *lat) {
  for (int a = 0; a < 2; a++) {
    if (!(axes >> a & 1) || m->n[a] <= 1) continue;
    n *= m->n[a];
    *bw = *bw > 0 && *bw < m->bw[a] ? *bw : m->bw[a];
    *lat = *lat > m->lat[a] ? *lat : m->lat[a];
  }
  return n;
}

double coll_time(const Mesh *m, CollKind k, int axis, double bytes) {
  return ring(k, m->n[axis], bytes, m->bw[axis], m->lat[axis]);
}

/* One collective over the devices of several axes (a bit mask): a ring over
   all of them, as the runtime runs one group, paced by the slowest link it
   crosses and paying the larger latency once. */
double coll_time_axes(const Mesh *m, CollKind k, int axes, double bytes) {
  if (axes == 1 || axes == 2) return coll_time(m, k, axes >> 1, bytes);
  double bw = 0, lat = 0;
  int n = widen(m, axes, 1, &bw, &lat);
  if (m->n[0] > 1 && m->n[1] > 1 && m->both_bw > 0) bw = m->both_bw; /* one group of both axes' devices */
  return ring(k, n, bytes, bw, lat);
}

/* A tied parameter's gradient summed over its copies on `copies` stages
   (and the devices of `axes` on each) is one ring over all of them, paced
   by the slower of the mesh axes' links and the link between the stages. */
double comm_time(const Mesh *m, const Comm *c, double *lat) {
  bool tied = c->copies > 1;
  double bw = tied ? m->copy_bw : 0, l = tied ? m->copy_lat : 0;
  int n = widen(m, c->axes, tied ? c->copies : 1, &bw, &l);
  if (lat) *lat = n > 1 && c->bytes > 0 ? l : 0;
  return tied ? ring(c->kind, n, c->bytes, bw, l) : coll_time_axes(m, c->kind, c->axes, c->bytes);
}
