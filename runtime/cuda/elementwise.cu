/* elementwise.cu: the element-wise ops (fill, activations and their
 * gradients, add/sub/mul/div with broadcasting, scale, copy and cast, acc).
 *
 * One kernel, instantiated per op: each thread takes 8 consecutive elements
 * at a time (16-byte loads and stores) over a grid-stride loop, the last
 * n % 8 elements one by one; misaligned operands or a broadcast operand
 * whose length is not a multiple of 8 take the one-by-one path throughout.
 * Values are computed in f32 by kmath.h's functions, as the CPU's
 * elementwise.c does, and bf16 outputs rounded to nearest even. */
#include "kern.cuh"

/* A launch's operands: o[i] = f(a[i % na], b[i % nb]) with the op's
   constants p0, p1 */
typedef struct Ew {
  DOut o;
  DIn a, b;
  int64_t n, na, nb;
  float p0, p1;
  bool vec; /* 8 at a time */
} Ew;

/* the value of one element; x from a, y from b */
template <int OP> __device__ __forceinline__ float ew_f(float x, float y, float p0, float p1) {
  switch (OP) {
  case OP_FILL: return p0;
  case OP_COPY: return x;
  case OP_SCALE: return km_scale(x, p0, p1);
  case OP_GELU: return km_gelu(x);
  case OP_RELU: return km_relu(x);
  case OP_SILU: return km_silu(x);
  case OP_TANH: return tanhf(x);
  case OP_EXP: return km_exp(x);
  case OP_RSQRT: return km_rsqrt(x);
  case OP_GELU_BWD: return km_gelu_bwd(x, y);
  case OP_RELU_BWD: return km_relu_bwd(x, y);
  case OP_SILU_BWD: return km_silu_bwd(x, y);
  case OP_TANH_BWD: return km_tanh_bwd(x, y);
  case OP_RSQRT_BWD: return km_rsqrt_bwd(x, y);
  case OP_ADD: return x + y;
  case OP_SUB: return x - y;
  case OP_MUL: return x * y;
  default: return x / y; /* OP_DIV */
  }
}

/* which operands an op reads */
static __host__ __device__ constexpr bool ew_reads_a(int op) { return op != OP_FILL; }
static __host__ __device__ constexpr bool ew_reads_b(int op) {
  return op != OP_FILL && op != OP_COPY && op != OP_SCALE && !(op >= OP_GELU && op <= OP_RSQRT);
}

/* which ops broadcast (the others' operands are as long as the output) */
static __host__ __device__ constexpr bool ew_bcast(int op) { return op >= OP_ADD && op <= OP_DIV; }

/* the element of an operand of length m repeating over n */
template <int OP> __device__ __forceinline__ int64_t ew_at(int64_t i, int64_t m, int64_t n) {
  return !ew_bcast(OP) || m == n ? i : i % m;
}

template <int OP> __global__ void __launch_bounds__(KTHREADS) ew_kernel(Ew e) {
  int64_t nvec = e.vec ? e.n / KVEC : 0;
  for (int64_t v = k_tid(); v < nvec; v += k_stride()) {
    int64_t i = v * KVEC;
    float x[KVEC] = {0}, y[KVEC] = {0}, r[KVEC];
    if (ew_reads_a(OP)) ld8(e.a, ew_at<OP>(i, e.na, e.n), x);
    if (ew_reads_b(OP)) ld8(e.b, ew_at<OP>(i, e.nb, e.n), y);
#pragma unroll
    for (int k = 0; k < KVEC; k++) r[k] = ew_f<OP>(x[k], y[k], e.p0, e.p1);
    st8(e.o, i, r);
  }
  for (int64_t i = nvec * KVEC + k_tid(); i < e.n; i += k_stride()) {
    float x = ew_reads_a(OP) ? ld(e.a, ew_at<OP>(i, e.na, e.n)) : 0.0f;
    float y = ew_reads_b(OP) ? ld(e.b, ew_at<OP>(i, e.nb, e.n)) : 0.0f;
    st(e.o, i, ew_f<OP>(x, y, e.p0, e.p1));
  }
}

/* Enqueues op over e (nothing for n == 0), choosing the 8-wide path where
   every operand it touches allows it. */
template <int OP> static void ew_launch(cudaStream_t s, Ew e) {
  if (e.n <= 0) return;
  bool va = !ew_reads_a(OP) || (k_aligned(e.a.p) && (e.na == e.n || e.na % KVEC == 0));
  bool vb = !ew_reads_b(OP) || (k_aligned(e.b.p) && (e.nb == e.n || e.nb % KVEC == 0));
  e.vec = k_aligned(e.o.p) && va && vb;
  int64_t work = e.vec ? e.n / KVEC + e.n % KVEC : e.n;
  ew_kernel<OP><<<k_blocks(work, KTHREADS), KTHREADS, 0, s>>>(e);
  CU_LAUNCHED();
}

static Ew ew_make(DOut o, int64_t n, DIn a, int64_t na, DIn b, int64_t nb) {
  Ew e;
  e.o = o, e.a = a, e.b = b, e.n = n, e.na = na, e.nb = nb, e.p0 = e.p1 = 0, e.vec = false;
  return e;
}

#define CASE(NAME)                                                                                                     \
  case NAME: ew_launch<NAME>(s, e); break

extern "C" void cu_fill(cudaStream_t s, DOut o, int64_t n, float v) {
  DIn none = {NULL, 0};
  Ew e = ew_make(o, n, none, n, none, n);
  e.p0 = v;
  ew_launch<OP_FILL>(s, e);
}

extern "C" void cu_unary(cudaStream_t s, OpKind op, DOut o, DIn a, int64_t n) {
  DIn none = {NULL, 0};
  Ew e = ew_make(o, n, a, n, none, n);
  switch (op) {
    CASE(OP_GELU);
    CASE(OP_RELU);
    CASE(OP_SILU);
    CASE(OP_TANH);
    CASE(OP_EXP);
    CASE(OP_RSQRT);
  default: cuda_fail("cu_unary", "not a unary op", __FILE__, __LINE__);
  }
}

/* x is the forward input (gelu, relu, silu) or output (tanh, rsqrt) */
extern "C" void cu_unary_bwd(cudaStream_t s, OpKind op, DOut o, DIn x, DIn dy, int64_t n) {
  Ew e = ew_make(o, n, x, n, dy, n);
  switch (op) {
    CASE(OP_GELU_BWD);
    CASE(OP_RELU_BWD);
    CASE(OP_SILU_BWD);
    CASE(OP_TANH_BWD);
    CASE(OP_RSQRT_BWD);
  default: cuda_fail("cu_unary_bwd", "not a unary backward op", __FILE__, __LINE__);
  }
}

extern "C" void cu_binary(cudaStream_t s, OpKind op, DOut o, int64_t n, DIn a, int64_t na, DIn b, int64_t nb) {
  Ew e = ew_make(o, n, a, na, b, nb);
  switch (op) {
    CASE(OP_ADD);
    CASE(OP_SUB);
    CASE(OP_MUL);
    CASE(OP_DIV);
  default: cuda_fail("cu_binary", "not a binary op", __FILE__, __LINE__);
  }
}

/* a * mul + add; a plain copy or cast when mul is 1 and add 0 (as the CPU,
   so -0 stays -0) */
extern "C" void cu_scale(cudaStream_t s, DOut o, DIn a, int64_t n, float mul, float add) {
  DIn none = {NULL, 0};
  Ew e = ew_make(o, n, a, n, none, n);
  e.p0 = mul, e.p1 = add;
  if (mul == 1 && add == 0)
    ew_launch<OP_COPY>(s, e);
  else
    ew_launch<OP_SCALE>(s, e);
}

/* o += a: o read as the first operand, as the CPU's e_acc */
extern "C" void cu_acc(cudaStream_t s, DOut o, DIn a, int64_t n) {
  DIn self = {o.p, o.bf16};
  ew_launch<OP_ADD>(s, ew_make(o, n, self, n, a, n));
}
