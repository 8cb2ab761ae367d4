/* einsum.c: two-operand einsums as oneDNN matrix products, prepared once.
 *
 * Every label is one of
 *   batch  in A, B and C      (leading dims of the product)
 *   M      in A and C         (rows of C)
 *   N      in B and C         (columns of C)
 *   K      in A and B only    (contracted)
 * Each operand is described to oneDNN in place, as [batch..., rows, cols]
 * with its own strides, when its M/K/N labels merge into one index of
 * constant stride (they are adjacent in memory, in one order); a transposed
 * operand is just another pair of strides. An operand that cannot be viewed
 * so, or a view oneDNN has no implementation for, is copied into [batch,
 * rows, cols] order first (the output: computed there, then copied into
 * place). A one-operand einsum is a transpose: a strided copy.
 *
 * einsum_prepare decides all of this and creates the primitive, when a
 * program is loaded; einsum_exec only copies (if it must) and runs it.
 * oneDNN dispatches by instruction set: f32 products on the widest vector
 * units, bf16 x bf16 (f32 accumulation) on bf16 units where the CPU has them
 * (avx512_core_bf16, AMX), and a slower path that is still correct where it
 * does not. Results do not change from run to run. */
#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

typedef struct Op {
  int rank;
  char lab[MAXRANK];
  int64_t size[MAXRANK], stride[MAXRANK];
} Op;

struct EinsumPlan {
  int nin;
  size_t esize_in, esize_out;
  Op orig[3]; /* A, B, C as stored */
  Op view[3]; /* as the product reads them (a canonical copy's layout where copy[k]) */
  bool copy[3];
  bool plain;             /* a product with an empty M, N or K: a loop of carve's own */
  bool swap;              /* C's innermost dim is A's: computed as C^T = B^T A^T (A and B swapped) */
  int64_t batch, M, N, K; /* its sizes */
  int order[3][MAXRANK];  /* canonical copy: dims of orig in canonical order */
  int ncanon[3];
  size_t scratch; /* bytes of the copies */
  dnnl_primitive_t prim;
  dnnl_memory_t mem[3];
  /* bf16 where oneDNN has no bf16 product (a CPU without AVX-512): the
     inputs widened to f32, an f32 plan, the output rounded back */
  EinsumPlan *widened;
  Scratch wide;
};

static dnnl_engine_t engine;
static dnnl_stream_t stream;

static void dnnl_start(void) {
  if (engine) return;
  if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
      dnnl_stream_create(&stream, engine, 0) != dnnl_success)
    carve_fatal("oneDNN: cannot create a CPU engine and stream");
}

const char *einsum_engine(void) {
  static char text[96];
  const dnnl_version_t *v = dnnl_version();
  dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  const char *name = (isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx     ? "AMX"
                     : (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16 ? "avx512_core_bf16"
                     : (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core           ? "avx512_core"
                     : (isa & dnnl_cpu_isa_avx2) == dnnl_cpu_isa_avx2                         ? "avx2"
                                                                                              : "sse4.1";
  snprintf(text, sizeof text, "oneDNN %d.%d.%d, %s", v->major, v->minor, v->patch, name);
  return text;
}

bool einsum_bf16_fast(void) {
  dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
}

/* ---------------------------------------------------------------- layouts */

static void op_init(Op *o, const char *labels, const Shape *s) {
  o->rank = s->rank;
  int64_t st = 1;
  for (int i = s->rank - 1; i >= 0; i--) {
    o->lab[i] = labels[i];
    o->size[i] = s->d[i];
    o->stride[i] = st;
    st *= s->d[i];
  }
}

static int find(const Op *o, char c) {
  for (int i = 0; i < o->rank; i++)
    if (o->lab[i] == c) return i;
  return -1;
}

/* dst (contiguous, dims in the order of `order`) <- src viewed by o */
CARVE_CLONES static void permute_copy(void *dst, const void *src, const Op *o, const int *order, int n, size_t es) {
  int64_t size[MAXRANK] = {0}, stride[MAXRANK] = {0}, total = 1;
  for (int i = 0; i < n; i++) {
    size[i] = o->size[order[i]];
    stride[i] = o->stride[order[i]];
    total *= size[i];
  }
  if (n == 0) {
    memcpy(dst, src, es);
    return;
  }
  int64_t inner = size[n - 1], is = stride[n - 1], outer = total / inner;
#pragma omp parallel for schedule(static) if (total > 65536)
  for (int64_t r = 0; r < outer; r++) {
    int64_t off = 0, rest = r;
    for (int i = n - 2; i >= 0; i--) {
      off += rest % size[i] * stride[i];
      rest /= size[i];
    }
    if (es == 4) {
      const float *s = (const float *)src + off;
      float *d = (float *)dst + r * inner;
      for (int64_t j = 0; j < inner; j++) d[j] = s[j * is];
    } else {
      const uint16_t *s = (const uint16_t *)src + off;
      uint16_t *d = (uint16_t *)dst + r * inner;
      for (int64_t j = 0; j < inner; j++) d[j] = s[j * is];
    }
  }
}

/* Labels of each role in the order used for grouping. */
typedef struct Roles {
  char batch[MAXRANK], m[MAXRANK], n[MAXRANK], k[MAXRANK];
  int nb, nm, nn, nk;
} Roles;

/* Sorts the labels of a group by decreasing stride in operand o. */
static void sort_by_stride(char *labs, int n, const Op *o) {
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && o->stride[find(o, labs[j])] > o->stride[find(o, labs[j - 1])]; j--) {
      char t = labs[j];
      labs[j] = labs[j - 1];
      labs[j - 1] = t;
    }
}

/* Can labs (in this order) be one index of o? Gives extent and stride. */
static bool merge(const Op *o, const char *labs, int n, int64_t *extent, int64_t *stride) {
  *extent = 1;
  *stride = 1;
  for (int i = 0; i < n; i++) {
    int p = find(o, labs[i]);
    if (i > 0 && o->stride[find(o, labs[i - 1])] != o->stride[p] * o->size[p]) return false;
    *extent *= o->size[p];
    *stride = o->stride[p];
  }
  return true;
}

static void roles_of(const Op *A, const Op *B, const Op *C, Roles *r) {
  *r = (Roles){0};
  for (int i = 0; i < A->rank; i++) {
    if (A->size[i] == 1) continue; /* size-1 labels do not affect layout */
    bool inb = find(B, A->lab[i]) >= 0, inc = find(C, A->lab[i]) >= 0;
    if (inb && inc)
      r->batch[r->nb++] = A->lab[i];
    else if (inc)
      r->m[r->nm++] = A->lab[i];
    else
      r->k[r->nk++] = A->lab[i];
  }
  for (int i = 0; i < B->rank; i++)
    if (B->size[i] > 1 && find(A, B->lab[i]) < 0) r->n[r->nn++] = B->lab[i];
  sort_by_stride(r->m, r->nm, A);
  sort_by_stride(r->k, r->nk, A);
  sort_by_stride(r->n, r->nn, B);
  sort_by_stride(r->batch, r->nb, C);
}

/* The canonical copy of o: contiguous, dims in the order (batch, rows, cols). */
static void canonical(EinsumPlan *e, int k, const Roles *r, const char *rows, int nr, const char *cols, int nc) {
  const Op *o = &e->orig[k];
  char order[MAXRANK];
  int n = r->nb + nr + nc;
  memcpy(order, r->batch, (size_t)r->nb);
  memcpy(order + r->nb, rows, (size_t)nr);
  memcpy(order + r->nb + nr, cols, (size_t)nc);
  Op c = {.rank = n};
  int64_t st = 1;
  for (int i = n - 1; i >= 0; i--) {
    e->order[k][i] = find(o, order[i]);
    c.lab[i] = order[i];
    c.size[i] = o->size[e->order[k][i]];
    c.stride[i] = st;
    st *= c.size[i];
  }
  e->view[k] = c;
  e->ncanon[k] = n;
  e->copy[k] = true;
}

/* The oneDNN description of operand k, [batch..., rows, cols]; false when
   its rows or cols do not merge into one index. */
static bool describe(const EinsumPlan *e, int k, const Roles *r, const char *rows, int nr, const char *cols, int nc,
                     dnnl_data_type_t dt, dnnl_memory_desc_t *md) {
  const Op *o = &e->view[k];
  dnnl_dims_t dims, strides;
  int n = 0;
  for (int i = 0; i < r->nb; i++) {
    int p = find(o, r->batch[i]);
    dims[n] = o->size[p], strides[n++] = o->stride[p];
  }
  int64_t ext, st;
  if (!merge(o, rows, nr, &ext, &st)) return false;
  dims[n] = ext, strides[n++] = st;
  if (!merge(o, cols, nc, &ext, &st)) return false;
  dims[n] = ext, strides[n++] = st;
  return dnnl_memory_desc_init_by_strides(md, n, dims, dt, strides) == dnnl_success;
}

static void release(EinsumPlan *e) {
  if (e->prim) dnnl_primitive_destroy(e->prim);
  for (int k = 0; k < 3; k++)
    if (e->mem[k]) dnnl_memory_destroy(e->mem[k]);
  e->prim = NULL;
  memset(e->mem, 0, sizeof e->mem);
}

/* Describes A, B, C (as viewed now) and creates the primitive. */
static bool create(EinsumPlan *e, const Roles *r, dnnl_data_type_t tin, dnnl_data_type_t tout) {
  dnnl_memory_desc_t md[3];
  if (!describe(e, 0, r, r->m, r->nm, r->k, r->nk, tin, &md[0]) ||
      !describe(e, 1, r, r->k, r->nk, r->n, r->nn, tin, &md[1]) ||
      !describe(e, 2, r, r->m, r->nm, r->n, r->nn, tout, &md[2]))
    return false;
  dnnl_matmul_desc_t d;
  dnnl_primitive_desc_t pd;
  if (dnnl_matmul_desc_init(&d, &md[0], &md[1], NULL, &md[2]) != dnnl_success) return false;
  if (dnnl_primitive_desc_create(&pd, &d, NULL, engine, NULL) != dnnl_success) return false;
  /* the reference implementation is correct but far too slow: copy instead */
  const char *impl = "";
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  bool ok = strncmp(impl, "ref", 3) != 0 && dnnl_primitive_create(&e->prim, pd) == dnnl_success;
  static const dnnl_query_t which[3] = {dnnl_query_src_md, dnnl_query_weights_md, dnnl_query_dst_md};
  for (int k = 0; ok && k < 3; k++) /* as the primitive describes them (size-1 dims normalised) */
    ok = dnnl_memory_create(&e->mem[k], dnnl_primitive_desc_query_md(pd, which[k], 0), engine, DNNL_MEMORY_NONE) ==
         dnnl_success;
  dnnl_primitive_desc_destroy(pd);
  if (!ok) release(e);
  return ok;
}

static int64_t numel_of(const Op *o) {
  int64_t n = 1;
  for (int i = 0; i < o->rank; i++) n *= o->size[i];
  return n;
}

/* Scratch bytes of operand k's canonical copy, 64-byte aligned. */
static size_t copy_bytes(const EinsumPlan *e, int k) {
  size_t b = (size_t)numel_of(&e->orig[k]) * (k == 2 ? e->esize_out : e->esize_in);
  return (b + 63) / 64 * 64;
}

/* Outer products, matrix-vector and batched dot products (an empty M, N
   or K): oneDNN's matmul does not take them reliably, and they are small.
   Every operand canonical, then a loop with f32 sums. */
static void plain_prepare(EinsumPlan *e, const Roles *r, const char *const *rows, const int *nr,
                          const char *const *cols, const int *nc) {
  e->plain = true;
  for (int k = 0; k < 3; k++) canonical(e, k, r, rows[k], nr[k], cols[k], nc[k]);
  int64_t st;
  e->batch = 1;
  for (int i = 0; i < r->nb; i++) e->batch *= e->orig[0].size[find(&e->orig[0], r->batch[i])];
  merge(&e->view[0], r->m, r->nm, &e->M, &st);
  merge(&e->view[0], r->k, r->nk, &e->K, &st);
  merge(&e->view[1], r->n, r->nn, &e->N, &st);
}

static float elem(const void *p, int64_t i, size_t es) {
  return es == 2 ? km_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

CARVE_CLONES static void plain_product(const EinsumPlan *e, void *const *ptr) {
  int64_t M = e->M, N = e->N, K = e->K;
#pragma omp parallel for schedule(static) if (e->batch * M * N * K > 65536)
  for (int64_t bm = 0; bm < e->batch * M; bm++) {
    int64_t b = bm / M, m = bm % M;
    for (int64_t n = 0; n < N; n++) {
      float s = 0;
      for (int64_t k = 0; k < K; k++)
        s += elem(ptr[0], (b * M + m) * K + k, e->esize_in) * elem(ptr[1], (b * K + k) * N + n, e->esize_in);
      int64_t at = (b * M + m) * N + n;
      if (e->esize_out == 2)
        ((uint16_t *)ptr[2])[at] = km_bf16(s);
      else
        ((float *)ptr[2])[at] = s;
    }
  }
}

static bool prepare_product(EinsumPlan *e, dnnl_data_type_t tin, dnnl_data_type_t tout) {
  Roles r;
  roles_of(&e->orig[0], &e->orig[1], &e->orig[2], &r);
  const char *rows[3] = {r.m, r.k, r.m}, *cols[3] = {r.k, r.n, r.n};
  int nr[3] = {r.nm, r.nk, r.nm}, nc[3] = {r.nk, r.nn, r.nn};
  if (!r.nm || !r.nn || !r.nk) {
    plain_prepare(e, &r, rows, nr, cols, nc);
    for (int k = 0; k < 3; k++) e->scratch += copy_bytes(e, k);
    return true;
  }
  for (int k = 0; k < 3; k++) {
    e->view[k] = e->orig[k];
    int64_t ext, st;
    if (!merge(&e->orig[k], rows[k], nr[k], &ext, &st) || !merge(&e->orig[k], cols[k], nc[k], &ext, &st))
      canonical(e, k, &r, rows[k], nr[k], cols[k], nc[k]);
  }
  if (!create(e, &r, tin, tout)) { /* no implementation for these strides: every operand canonical */
    for (int k = 0; k < 3; k++)
      if (!e->copy[k]) canonical(e, k, &r, rows[k], nr[k], cols[k], nc[k]);
    if (!create(e, &r, tin, tout)) return false;
  }
  for (int k = 0; k < 3; k++)
    if (e->copy[k]) e->scratch += copy_bytes(e, k);
  return true;
}

EinsumPlan *einsum_prepare(const char *spec, int nin, const Shape *const *ins, DType in_dt, const Shape *out,
                           DType out_dt, char *why, size_t n) {
  char parts[3][MAXRANK + 1];
  if (!einsum_parse(spec, nin, parts)) {
    snprintf(why, n, "malformed einsum spec");
    return NULL;
  }
  dnnl_start();
  EinsumPlan *e = xcalloc(1, sizeof(EinsumPlan));
  e->nin = nin;
  e->esize_in = (size_t)dtype_size(in_dt);
  e->esize_out = (size_t)dtype_size(out_dt);
  if (nin == 1) { /* a transpose */
    op_init(&e->orig[0], parts[0], ins[0]);
    for (int i = 0; i < ins[0]->rank; i++) e->order[0][i] = find(&e->orig[0], parts[1][i]);
    return e;
  }
  /* the product writes C's rows in order: if C's innermost label is A's,
     swap the operands, so it is one of the second operand's (N) labels */
  char inner = parts[2][0] ? parts[2][strlen(parts[2]) - 1] : 0;
  e->swap = inner && strchr(parts[0], inner) && !strchr(parts[1], inner);
  op_init(&e->orig[0], parts[e->swap], ins[e->swap]);
  op_init(&e->orig[1], parts[!e->swap], ins[!e->swap]);
  op_init(&e->orig[2], parts[2], out);
  dnnl_data_type_t tin = in_dt == DT_BF16 ? dnnl_bf16 : dnnl_f32, tout = out_dt == DT_BF16 ? dnnl_bf16 : dnnl_f32;
  if (!prepare_product(e, tin, tout) && in_dt == DT_BF16) { /* no bf16 product here: through f32 */
    release(e);
    e->widened = einsum_prepare(spec, nin, ins, DT_F32, out, DT_F32, why, n);
    if (e->widened) return e;
  }
  if (!e->prim && !e->plain) {
    snprintf(why, n, "oneDNN has no matrix product for %s x %s -> %s here", dtype_name(in_dt), dtype_name(in_dt),
             dtype_name(out_dt));
    einsum_free(e);
    return NULL;
  }
  return e;
}

/* a bf16 product through f32 (see EinsumPlan.widened) */
static void widened_exec(const EinsumPlan *e, const void *const *in, void *out, Scratch *s) {
  /* in[0] is orig[swap] (the operands may have been swapped, see swap) */
  int64_t n[3] = {numel_of(&e->orig[e->swap]), numel_of(&e->orig[!e->swap]), numel_of(&e->orig[2])};
  float *w = scratch_get((Scratch *)&e->wide, sizeof(float) * (size_t)(n[0] + n[1] + n[2]));
  cvt_to_f32(w, in[0], n[0]);
  cvt_to_f32(w + n[0], in[1], n[1]);
  const void *wide[2] = {w, w + n[0]};
  float *o = e->esize_out == 2 ? w + n[0] + n[1] : out;
  einsum_exec(e->widened, wide, o, s);
  if (o != out) cvt_to_bf16(out, o, n[2]);
}

void einsum_exec(const EinsumPlan *e, const void *const *in, void *out, Scratch *s) {
  if (e->widened) {
    widened_exec(e, in, out, s);
    return;
  }
  if (e->nin == 1) {
    permute_copy(out, in[0], &e->orig[0], e->order[0], e->orig[0].rank, e->esize_in);
    return;
  }
  unsigned char *tmp = scratch_get(s, e->scratch), *at = tmp;
  void *ptr[3] = {(void *)in[e->swap], (void *)in[!e->swap], out};
  for (int k = 0; k < 3; k++) {
    if (!e->copy[k]) continue;
    if (k < 2) permute_copy(at, ptr[k], &e->orig[k], e->order[k], e->ncanon[k], e->esize_in);
    ptr[k] = at;
    at += copy_bytes(e, k);
  }
  if (e->plain) {
    plain_product(e, ptr);
  } else {
    for (int k = 0; k < 3; k++) dnnl_memory_set_data_handle(e->mem[k], ptr[k]);
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->mem[0]}, {DNNL_ARG_WEIGHTS, e->mem[1]}, {DNNL_ARG_DST, e->mem[2]}};
    if (dnnl_primitive_execute(e->prim, stream, 3, args) != dnnl_success || dnnl_stream_wait(stream) != dnnl_success)
      carve_fatal("oneDNN: a matrix product failed to run");
  }
  if (e->copy[2]) { /* scatter the canonical result into the real layout */
    const Op *c = &e->view[2], *real = &e->orig[2];
    Op src = {.rank = real->rank};
    for (int i = 0; i < real->rank; i++) {
      int p = find(c, real->lab[i]);
      src.lab[i] = real->lab[i];
      src.size[i] = real->size[i];
      src.stride[i] = p >= 0 ? c->stride[p] : 0; /* a size-1 label is not in the canonical layout */
    }
    int id[MAXRANK];
    for (int i = 0; i < real->rank; i++) id[i] = i;
    permute_copy(out, ptr[2], &src, id, real->rank, e->esize_out);
  }
}

void einsum_free(EinsumPlan *e) {
  if (!e) return;
  einsum_free(e->widened);
  free(e->wide.p);
  release(e);
  free(e);
}
