/* test_cuda_einsum.c: the CUDA einsum's plan (runtime/cuda/einsum_desc.h)
 * run on the CPU: its canonical copies, its column-major strided-batched
 * product and its scatter, each done by a naive host loop that checks every
 * access against its buffer, against the CPU backend's einsum
 * (einsum_prepare/einsum_exec), for every einsum in models/<name>.graph and its
 * two gradients, fixed layouts (transposed, batched, broadcast, size-1 and
 * empty roles, one-operand transposes) and random specs, on four size
 * tables, in f32 and bf16 (f32 and bf16 results). It proves the operand
 * mapping cuBLASLt is given; the device itself is not involved. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/cpu/cpu.h"
#include "../runtime/cuda/einsum_desc.h"
#include "einsum_specs.h"
#include "harness.h"

/* ---------------------------------------------------------------- the plan, on the host */

/* a host buffer; every access is checked against it */
typedef struct Mem {
  unsigned char *p;
  int64_t bytes;
} Mem;
static int64_t outside; /* accesses outside a buffer, per case */

static bool inside(Mem m, int64_t i, int es) { return i >= 0 && (i + 1) * es <= m.bytes; }

static float load(Mem m, int64_t i, int es) {
  if (!inside(m, i, es)) return outside++, 0;
  return es == 2 ? km_f32(((const uint16_t *)m.p)[i]) : ((const float *)m.p)[i];
}

static void store(Mem m, int64_t i, int es, float v) {
  if (!inside(m, i, es)) {
    outside++;
    return;
  }
  if (es == 2)
    ((uint16_t *)m.p)[i] = km_bf16(v);
  else
    ((float *)m.p)[i] = v;
}

static int64_t copy_numel(const CuCopy *c) {
  int64_t n = 1;
  for (int i = 0; i < c->rank; i++) n *= c->size[i];
  return n;
}

/* cu_permute: dst (contiguous) <- src read with c's strides */
static void ref_copy(const CuCopy *c, Mem dst, Mem src, int es) {
  int64_t total = copy_numel(c);
  for (int64_t t = 0; t < total; t++) {
    int64_t off = 0, rest = t;
    for (int i = c->rank - 1; i >= 0; i--) {
      off += rest % c->size[i] * c->stride[i];
      rest /= c->size[i];
    }
    if (!inside(dst, t, es) || !inside(src, off, es)) {
      outside++;
      continue;
    }
    memcpy(dst.p + t * es, src.p + off * es, (size_t)es);
  }
}

/* element (i, j) of op(x) in batch b */
static float op_at(const CuMat *x, Mem m, int64_t b, int64_t i, int64_t j, int es) {
  int64_t r = x->trans ? j : i, c = x->trans ? i : j;
  return load(m, b * x->bstride + r + c * x->ld, es);
}

/* cublasLtMatmul, column-major, strided-batched, alpha 1, beta 0, f32 sums */
static void ref_gemm(const CuGemm *g, Mem a, Mem b, Mem d) {
  for (int64_t t = 0; t < g->batch; t++)
    for (int64_t i = 0; i < g->m; i++)
      for (int64_t j = 0; j < g->n; j++) {
        float s = 0;
        for (int64_t l = 0; l < g->k; l++)
          s += op_at(&g->a, a, t, i, l, g->esize_in) * op_at(&g->b, b, t, l, j, g->esize_in);
        store(d, t * g->d.bstride + i + j * g->d.ld, g->esize_out, s);
      }
}

/* the part of scratch a copy of n elements at x->at uses */
static Mem region(Mem scratch, const CuMat *x, int64_t n, int es) { return (Mem){scratch.p + x->at, n * es}; }

/* cu_einsum_exec, on the host */
static void ref_exec(const CuGemm *g, const Mem *in, Mem out) {
  if (g->transpose) {
    ref_copy(&g->perm, out, in[0], g->esize_in);
    return;
  }
  Mem scratch = {calloc(1, (size_t)g->scratch + 1), g->scratch};
  Mem a = in[g->a.from], b = in[g->b.from], d = out;
  if (g->a.copied) {
    Mem r = region(scratch, &g->a, copy_numel(&g->a.copy), g->esize_in);
    ref_copy(&g->a.copy, r, a, g->esize_in);
    a = r;
  }
  if (g->b.copied) {
    Mem r = region(scratch, &g->b, copy_numel(&g->b.copy), g->esize_in);
    ref_copy(&g->b.copy, r, b, g->esize_in);
    b = r;
  }
  if (g->d.copied) d = region(scratch, &g->d, copy_numel(&g->d.copy), g->esize_out);
  ref_gemm(g, a, b, d);
  if (g->d.copied) ref_copy(&g->d.copy, out, d, g->esize_out);
  free(scratch.p);
}

/* ---------------------------------------------------------------- what cuBLASLt requires of the plan */

static bool matrix_ok(const CuMat *x, int64_t rows, int64_t cols, int es) {
  bool dims = x->trans ? x->rows == cols && x->cols == rows : x->rows == rows && x->cols == cols;
  bool align =
      x->align >= es && 64 % x->align == 0 && (x->ld * es) % x->align == 0 && (x->bstride * es) % x->align == 0;
  return dims && x->ld >= (x->rows > 1 ? x->rows : 1) && x->bstride >= 0 && align;
}

/* the copies lie in scratch, 64-byte aligned, apart */
static bool scratch_ok(const CuGemm *g) {
  const CuMat *x[3] = {&g->a, &g->b, &g->d};
  int64_t end[3] = {0};
  for (int i = 0; i < 3; i++) {
    if (!x[i]->copied) continue;
    end[i] = x[i]->at + copy_numel(&x[i]->copy) * (i == 2 ? g->esize_out : g->esize_in);
    if (x[i]->at % 64 || end[i] > g->scratch) return false;
    for (int j = 0; j < i; j++)
      if (x[j]->copied && x[i]->at < end[j] && x[j]->at < end[i]) return false;
  }
  return true;
}

static void check_plan(const char *spec, const CuGemm *g) {
  if (g->transpose) return;
  CHECK(!g->d.trans && g->batch >= 1 && g->batch <= INT32_MAX, "%s: D is not transposed, batch %lld", spec,
        (long long)g->batch);
  CHECK(matrix_ok(&g->a, g->m, g->k, g->esize_in), "%s: A is a valid m x k operand", spec);
  CHECK(matrix_ok(&g->b, g->k, g->n, g->esize_in), "%s: B is a valid k x n operand", spec);
  CHECK(matrix_ok(&g->d, g->m, g->n, g->esize_out), "%s: D is a valid m x n result", spec);
  CHECK(scratch_ok(g), "%s: the copies fit in scratch, apart", spec);
}

/* ---------------------------------------------------------------- against the CPU einsum */

static int cases, copies, in_place;

static double value(const void *x, int64_t i, int es) {
  return es == 2 ? km_f32(((const uint16_t *)x)[i]) : ((const float *)x)[i];
}

/* The largest difference between two outputs, each relative to 1 + the
   larger of the reference element and the reference's RMS (NaN:
   unwritten): relative to the element alone, a long sum (K in the
   thousands) that nearly cancels would show sum-order noise. */
static double worst_of(const void *x, const void *y, int64_t n, int es) {
  double worst = 0, ss = 0;
  for (int64_t i = 0; i < n; i++) ss += value(y, i, es) * value(y, i, es);
  double rms = sqrt(ss / (double)(n ? n : 1));
  for (int64_t i = 0; i < n; i++) {
    double want = value(y, i, es), err = fabs(value(x, i, es) - want) / (1 + fmax(fabs(want), rms));
    if (!(err <= worst)) worst = isnan(err) ? INFINITY : err;
  }
  return worst;
}

static void run_case(const char *spec, int nin, const Shape *const *ins, const Shape *sc, void *const *x, DType dt,
                     DType odt, Scratch *scratch) {
  char why[256];
  CuGemm g;
  const char *no = cu_einsum_describe(&g, spec, nin, ins, dt, sc, odt);
  CHECK(no == NULL, "%s %s->%s: described (%s)", spec, dtype_name(dt), dtype_name(odt), no ? no : "");
  EinsumPlan *e = einsum_prepare(spec, nin, ins, dt, sc, odt, why, sizeof why);
  CHECK(e != NULL, "%s: CPU plan (%s)", spec, e ? "" : why);
  if (no || !e) {
    einsum_free(e);
    return;
  }
  check_plan(spec, &g);
  int es_out = dtype_size(odt);
  int64_t nout = shape_numel(sc);
  void *want = malloc((size_t)(nout * es_out)), *got = malloc((size_t)(nout * es_out));
  memset(got, 0xff, (size_t)(nout * es_out)); /* NaN where the plan writes nothing */
  einsum_exec(e, (const void *const *)x, want, scratch);
  Mem in[2] = {{x[0], shape_numel(ins[0]) * dtype_size(dt)},
               {x[1], nin > 1 ? shape_numel(ins[1]) * dtype_size(dt) : 0}};
  outside = 0;
  ref_exec(&g, in, (Mem){got, nout * es_out});
  CHECK(outside == 0, "%s: %lld accesses outside a buffer", spec, (long long)outside);
  double err = worst_of(got, want, nout, es_out), tol = es_out == 2 ? 1.0 / 128 : 1e-5;
  CHECK(err <= tol, "%s %s->%s: the GPU plan differs from the CPU einsum by %g", spec, dtype_name(dt), dtype_name(odt),
        err);
  cases++;
  if (!g.transpose) (g.a.copied || g.b.copied || g.d.copied) ? copies++ : in_place++;
  einsum_free(e);
  free(want), free(got);
}

/* spec on these sizes (by label letter), in f32 and bf16 */
static void compare(const char *spec, const int64_t *sizes, Scratch *scratch) {
  Shape sa, sb, sc;
  int nin = spec_shapes(spec, sizes, &sa, &sb, &sc);
  const Shape *ins[2] = {&sa, &sb};
  const char *bad = einsum_check(spec, nin, ins, &sc);
  CHECK(bad == NULL, "%s: spec accepted (%s)", spec, bad ? bad : "");
  if (bad) return;
  int64_t n[2] = {shape_numel(&sa), shape_numel(&sb)};
  float *f[2];
  uint16_t *h[2];
  for (int k = 0; k < 2; k++) {
    f[k] = malloc(sizeof(float) * (size_t)n[k] + 4);
    h[k] = malloc(sizeof(uint16_t) * (size_t)n[k] + 2);
    for (int64_t i = 0; i < n[k]; i++) {
      h[k][i] = km_bf16(rng_normal((uint64_t)k + 1, (uint64_t)i));
      f[k][i] = rng_normal((uint64_t)k + 1, (uint64_t)i);
    }
  }
  void *xf[2] = {f[0], f[1]}, *xh[2] = {h[0], h[1]};
  run_case(spec, nin, ins, &sc, xf, DT_F32, DT_F32, scratch);
  if (nin == 2) run_case(spec, nin, ins, &sc, xh, DT_BF16, DT_F32, scratch);
  run_case(spec, nin, ins, &sc, xh, DT_BF16, DT_BF16, scratch);
  for (int k = 0; k < 2; k++) free(f[k]), free(h[k]);
}

/* ---------------------------------------------------------------- the specs */

/* every einsum in models/<name>.graph (labels joined) */
static const char *models[] = {
    "bh,hc->bc",       "bi,io->bo",     "bnst,btnd->bsnd", "bsec,bsh->ech", "bsec,ech->bsh", "bsf,fh->bsh",
    "bsh,he->bse",     "bsh,hf->bsf",   "bsh,hk->bsk",     "bsh,hnd->bsnd", "bsh,hv->bsv",   "bsh,vh->bsv",
    "bsnd,btnd->bnst", "bsnd,ndh->bsh", "ecf,efh->ech",    "ech,ehf->ecf",
};

/* the test_einsum layouts, and transposed, batched, broadcast, size-1 and
   empty-role ones, and transposes */
static const char *fixed[] = {
    "ab,bc->ac",
    "ab,ac->bc",
    "ac,bc->ab",
    "abc,cd->abd",
    "abd,cd->abc",
    "abc,abd->cd",
    "abcd,aecd->acbe",
    "acbe,aecd->abcd",
    "acbe,abcd->aecd",
    "abcd,cde->abe",
    "abe,cde->abcd",
    "abcd,abe->cde",
    "ijk,jkl->li",
    "li,jkl->ijk",
    "ijk,li->jkl",
    "bca,cd->dab",
    "tec,th->ech",
    "ech,ehf->ecf",
    "tec,ecf->tf",
    "ab,bc->ca",
    "ba,cb->ca",
    "abc,acd->bdc",
    "abc,acd->dbc",
    "ab,ab->ab",
    "a,b->ab",
    "ab,b->a",
    "b,ab->a",
    "a,a->",
    "ab,ab->",
    "abc,abd->abcd",
    "ab,ab->a",
    "abc,c->ab",
    "c,abc->ba",
    "abc->cab",
    "abc->acb",
    "ab->ba",
    "a->a",
    "abcd->dbca",
};

/* The two gradients of C = einsum("A,B->C"): "C,B->A" and "A,C->B". */
static void gradients(const char *spec, char out[2][64]) {
  char a[16] = "", b[16] = "", c[16] = "";
  const char *arrow = strstr(spec, "->"), *comma = strchr(spec, ',');
  memcpy(a, spec, (size_t)(comma - spec));
  memcpy(b, comma + 1, (size_t)(arrow - comma - 1));
  strcpy(c, arrow + 2);
  snprintf(out[0], 64, "%s,%s->%s", c, b, a);
  snprintf(out[1], 64, "%s,%s->%s", a, c, b);
}

int main(void) {
  Scratch scratch = {0};
  int64_t tables[4][26];
  for (int l = 0; l < 26; l++) {
    static const int64_t small[26] = {2, 3, 4, 5, 3, 2, 4, 3, 2, 5, 3, 2, 4, 2, 3, 2, 2, 3, 2, 2, 3, 2, 2, 2, 2, 2};
    tables[0][l] = small[l];                  /* test_einsum's */
    tables[1][l] = l % 3 == 1 ? 1 : small[l]; /* size-1 labels (broadcast) */
    tables[2][l] = 3 + 2 * (l % 4);           /* odd: unaligned lds and batch strides */
    tables[3][l] = l % 2 ? 8 : 16;            /* 16-byte multiples */
  }
  for (int s = 0; s < 4; s++) {
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
      char grad[2][64];
      gradients(models[i], grad);
      compare(models[i], tables[s], &scratch);
      compare(grad[0], tables[s], &scratch);
      compare(grad[1], tables[s], &scratch);
    }
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) compare(fixed[i], tables[s], &scratch);
    for (int t = 0; t < 150; t++) {
      char spec[32];
      if (random_spec(t, spec, sizeof spec)) compare(spec, tables[s], &scratch);
    }
  }
  printf("%d cases (%d products in place, %d through copies, the rest transposes)\n", cases, in_place, copies);
  free(scratch.p);
  return test_summary();
}
