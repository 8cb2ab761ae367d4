/* einsum.c: two-operand einsums as oneDNN matrix products, prepared once.
 *
 * The labels' roles (batch, M, N, K), the in-place views and the canonical
 * copies are ../einsum_layout.h's. Each operand is described to oneDNN in
 * place, as [batch..., rows, cols] with its own strides, when its M/K/N
 * labels merge into one index of constant stride; a transposed operand is
 * just another pair of strides. An operand that cannot be viewed so, or a
 * view oneDNN has no implementation for, is copied into [batch, rows, cols]
 * order first (the output: computed there, then copied into place). A
 * one-operand einsum is a transpose: a strided copy.
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

#include "../einsum_layout.h"
#include "cpu.h"

struct EinsumPlan {
  EinsumLayout L; /* the operands' roles, views and canonical copies */
  size_t esize_in, esize_out;
  bool plain;     /* a product with an empty M, N or K: a loop of carve's own */
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

/* The oneDNN description of operand k, [batch..., rows, cols]; false when
   its rows or cols do not merge into one index. */
static bool describe(const EinsumLayout *L, int k, dnnl_data_type_t dt, dnnl_memory_desc_t *md) {
  const Op *o = &L->view[k];
  const Roles *r = &L->r;
  dnnl_dims_t dims, strides;
  int n = 0, nr, nc;
  const char *rows = layout_rows(L, k, &nr), *cols = layout_cols(L, k, &nc);
  for (int i = 0; i < r->nb; i++) {
    int p = op_find(o, r->batch[i]);
    dims[n] = o->size[p], strides[n++] = o->stride[p];
  }
  int64_t ext, st;
  if (!op_merge(o, rows, nr, &ext, &st)) return false;
  dims[n] = ext, strides[n++] = st;
  if (!op_merge(o, cols, nc, &ext, &st)) return false;
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
static bool create(EinsumPlan *e, dnnl_data_type_t tin, dnnl_data_type_t tout) {
  dnnl_memory_desc_t md[3];
  if (!describe(&e->L, 0, tin, &md[0]) || !describe(&e->L, 1, tin, &md[1]) || !describe(&e->L, 2, tout, &md[2]))
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

/* Scratch bytes of operand k's canonical copy, 64-byte aligned. */
static size_t copy_bytes(const EinsumPlan *e, int k) {
  size_t b = (size_t)op_numel(&e->L.orig[k]) * (k == 2 ? e->esize_out : e->esize_in);
  return (b + 63) / 64 * 64;
}

static float elem(const void *p, int64_t i, size_t es) {
  return es == 2 ? km_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* Outer products, matrix-vector and batched dot products (an empty M, N
   or K): oneDNN's matmul does not take them reliably, and they are small.
   Every operand canonical, then a loop with f32 sums. */
CARVE_CLONES static void plain_product(const EinsumPlan *e, void *const *ptr) {
  int64_t M = e->L.M, N = e->L.N, K = e->L.K;
#pragma omp parallel for schedule(static) if (e->L.batch * M * N * K > 65536)
  for (int64_t bm = 0; bm < e->L.batch * M; bm++) {
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
  EinsumLayout *L = &e->L;
  if (layout_empty_role(L)) {
    e->plain = true;
    for (int k = 0; k < 3; k++) layout_canonical(L, k);
    for (int k = 0; k < 3; k++) e->scratch += copy_bytes(e, k);
    return true;
  }
  for (int k = 0; k < 3; k++)
    if (!layout_merges(L, k)) layout_canonical(L, k);
  if (!create(e, tin, tout)) { /* no implementation for these strides: every operand canonical */
    for (int k = 0; k < 3; k++)
      if (!L->copy[k]) layout_canonical(L, k);
    if (!create(e, tin, tout)) return false;
  }
  for (int k = 0; k < 3; k++)
    if (L->copy[k]) e->scratch += copy_bytes(e, k);
  return true;
}

EinsumPlan *einsum_prepare(const char *spec, int nin, const Shape *const *ins, DType in_dt, const Shape *out,
                           DType out_dt, char *why, size_t n) {
  EinsumPlan *e = xcalloc(1, sizeof(EinsumPlan));
  if (!einsum_layout_init(&e->L, spec, nin, ins, out)) {
    free(e);
    snprintf(why, n, "malformed einsum spec");
    return NULL;
  }
  dnnl_start();
  e->esize_in = (size_t)dtype_size(in_dt);
  e->esize_out = (size_t)dtype_size(out_dt);
  if (nin == 1) return e; /* a transpose */
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
  const EinsumLayout *L = &e->L;
  int64_t n[3] = {op_numel(&L->orig[L->swap]), op_numel(&L->orig[!L->swap]), op_numel(&L->orig[2])};
  float *w = scratch_get((Scratch *)&e->wide, sizeof(float) * (size_t)(n[0] + n[1] + n[2]));
  cvt_to_f32(w, in[0], n[0]);
  cvt_to_f32(w + n[0], in[1], n[1]);
  const void *wide[2] = {w, w + n[0]};
  float *o = e->esize_out == 2 ? w + n[0] + n[1] : out;
  einsum_exec(e->widened, wide, o, s);
  if (o != out) cvt_to_bf16(out, o, n[2]);
}

void einsum_exec(const EinsumPlan *e, const void *const *in, void *out, Scratch *s) {
  const EinsumLayout *L = &e->L;
  if (e->widened) {
    widened_exec(e, in, out, s);
    return;
  }
  if (L->nin == 1) {
    permute_copy(out, in[0], &L->orig[0], L->order[0], L->orig[0].rank, e->esize_in);
    return;
  }
  unsigned char *tmp = scratch_get(s, e->scratch), *at = tmp;
  void *ptr[3] = {(void *)in[L->swap], (void *)in[!L->swap], out};
  for (int k = 0; k < 3; k++) {
    if (!L->copy[k]) continue;
    if (k < 2) permute_copy(at, ptr[k], &L->orig[k], L->order[k], L->ncanon[k], e->esize_in);
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
  if (L->copy[2]) { /* scatter the canonical result into the real layout */
    Op src = layout_scatter(L);
    int id[MAXRANK];
    for (int i = 0; i < src.rank; i++) id[i] = i;
    permute_copy(out, ptr[2], &src, id, src.rank, e->esize_out);
  }
}

void einsum_free(EinsumPlan *e) {
  if (!e) return;
  einsum_free(e->widened);
  free(e->wide.p);
  release(e);
  free(e);
}
