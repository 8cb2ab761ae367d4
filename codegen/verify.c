/* verify.c: program_verify, the checks every program passes before it is
 * written (codegen) and before it runs (the runtime reads untrusted files).
 *
 * Every instruction is checked against its buffers' shapes and dtypes, so a
 * kernel never reads or writes outside a buffer, whatever a program file
 * says. What a program may contain does not depend on the backend that runs
 * it; whether a backend can run an instruction is its own `supports` check.
 *
 * Dtypes: f32 and bf16 are the float dtypes, i32 holds ids and labels. Compute
 * instructions take float inputs of either float dtype and write either (the
 * backend computes in f32 and rounds what it stores); an einsum's two inputs
 * share one dtype; the optimizer, the loss, norms and the clip factor are f32;
 * a collective moves one dtype, so its input and output agree. */
#include "carve.h"

#include <string.h>

static const Shape *S(const Program *p, int b) { return &p->bufs[b].shape; }
static int64_t N(const Program *p, int b) { return shape_numel(&p->bufs[b].shape); }
static DType T(const Program *p, int b) { return p->bufs[b].dtype; }
static bool is_float(DType t) { return t == DT_F32 || t == DT_BF16; }
static int64_t last(const Program *p, int b) {
  const Shape *s = S(p, b);
  return s->rank ? s->d[s->rank - 1] : 1;
}

/* ---------------------------------------------------------------- einsum specs */

bool einsum_parse(const char *spec, int nin, char parts[3][MAXRANK + 1]) {
  const char *arrow = strstr(spec, "->");
  if (!arrow) return false;
  const char *comma = nin == 2 ? memchr(spec, ',', (size_t)(arrow - spec)) : NULL;
  if (nin == 2 && !comma) return false;
  const char *ends[3] = {nin == 2 ? comma : arrow, arrow, spec + strlen(spec)};
  const char *starts[3] = {spec, nin == 2 ? comma + 1 : arrow, arrow + 2};
  for (int k = 0; k < 3; k++) {
    size_t len = (size_t)(ends[k] - starts[k]);
    if (len > MAXRANK) return false;
    memcpy(parts[k], starts[k], len);
    parts[k][len] = 0;
  }
  if (nin == 1) {
    strcpy(parts[1], parts[2]);
    parts[2][0] = 0;
  }
  return true;
}

/* Label l[i] of operand k: a letter, once in its operand, of one size
   wherever it appears, and present in another operand too. */
static const char *check_label(char parts[3][MAXRANK + 1], const Shape *const *shapes, int nops, int k, int i) {
  const char *l = parts[k];
  char c = l[i];
  if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) return "einsum labels must be letters";
  if (strchr(l + i + 1, c)) return "einsum label repeated within one operand";
  bool elsewhere = false;
  for (int k2 = 0; k2 < nops; k2++) {
    const char *p = strchr(parts[k2], c);
    if (p && shapes[k2]->d[p - parts[k2]] != shapes[k]->d[i]) return "einsum label sizes disagree";
    if (p && k2 != k) elsewhere = true;
  }
  return elsewhere ? NULL : "einsum label appears in only one place";
}

const char *einsum_check(const char *spec, int nin, const Shape *const *in, const Shape *out) {
  char raw[3][MAXRANK + 1], parts[3][MAXRANK + 1];
  if (nin < 1 || nin > 2 || !einsum_parse(spec, nin, raw)) return "malformed einsum spec";
  /* operands in order: the inputs, then the output */
  const Shape *shapes[3] = {in[0], nin == 2 ? in[1] : out, out};
  strcpy(parts[0], raw[0]);
  strcpy(parts[1], raw[1]);
  strcpy(parts[2], nin == 2 ? raw[2] : "");
  int nops = nin + 1;
  for (int k = 0; k < nops; k++)
    if ((int)strlen(parts[k]) != shapes[k]->rank) return "einsum labels do not match the rank of a buffer";
  for (int k = 0; k < nops; k++)
    for (int i = 0; i < shapes[k]->rank; i++) {
      const char *why = check_label(parts, shapes, nops, k, i);
      if (why) return why;
    }
  if (nin == 1 && strlen(parts[0]) != strlen(parts[1])) return "one-operand einsum must be a transpose";
  return NULL;
}

/* ---------------------------------------------------------------- communication */

int group_pos(const Program *p, int64_t g, int rank) {
  if (g < 0 || g >= p->ngroups) return -1;
  for (int k = 0; k < p->group_size[g]; k++)
    if (p->group_ranks[g][k] == rank) return k;
  return -1;
}

/* Gathers, scatters and shards split a flat buffer of n elements into
   group-size chunks of c, the last one zero-padded. */
static bool chunks_fit(int64_t n, int64_t c, int size) { return c > 0 && n <= c * size && n > c * (size - 1); }

/* gather_dim, split_dim, reduce_scatter_dim: the whole tensor is `size` parts along axis */
static const char *check_dim_move(const Program *p, const Instr *in, int size) {
  int o = in->out, x = in->in[0];
  const Shape *whole = S(p, in->op == OP_GATHER_DIM ? o : x), *part = S(p, in->op == OP_GATHER_DIM ? x : o);
  int64_t a = in->i[1];
  if (a < 0 || a >= whole->rank || whole->rank != part->rank) return "axis out of range";
  for (int k = 0; k < whole->rank; k++)
    if (whole->d[k] != (k == a ? part->d[k] * size : part->d[k])) return "shapes are not the group's parts";
  return NULL;
}

/* all_to_all_dim: split along `from` in, along `to` out */
static const char *check_all_to_all(const Program *p, const Instr *in, int size) {
  const Shape *a = S(p, in->in[0]), *b = S(p, in->out);
  int64_t f = in->i[1], t = in->i[2];
  if (f < 0 || t < 0 || f == t || f >= a->rank || t >= a->rank || a->rank != b->rank) return "axes out of range";
  for (int k = 0; k < a->rank; k++)
    if (k == f ? b->d[k] != a->d[k] * size : k == t ? a->d[k] != b->d[k] * size : a->d[k] != b->d[k])
      return "shapes are not the group's parts";
  return NULL;
}

static const char *check_comm(const Program *p, const Instr *in) {
  int o = in->out, x = in->nin ? in->in[0] : -1;
  if (in->op == OP_SEND || in->op == OP_RECV) {
    if (in->i[0] < 0 || in->i[0] >= p->world || in->i[0] == p->rank) return "peer is not another rank of the world";
    if (in->i[1] < 0 || in->i[1] > (1 << 30)) return "tag out of range";
    return NULL;
  }
  int pos = group_pos(p, in->i[0], p->rank);
  if (pos < 0) return "this rank is not in the instruction's group";
  int size = p->group_size[in->i[0]];
  bool moves = in->op == OP_GATHER_DIM || in->op == OP_SPLIT_DIM || in->op == OP_ALL_TO_ALL_DIM;
  if (T(p, o) != T(p, x)) return "input and output dtypes differ";
  if (!moves && !is_float(T(p, o))) return "expected float buffers";
  if (in->op == OP_GATHER_DIM || in->op == OP_SPLIT_DIM || in->op == OP_REDUCE_SCATTER_DIM)
    return check_dim_move(p, in, size);
  if (in->op == OP_ALL_TO_ALL_DIM) return check_all_to_all(p, in, size);
  switch (in->op) {
  case OP_ALL_REDUCE: return N(p, o) == N(p, x) ? NULL : "input and output sizes differ";
  case OP_ALL_GATHER: return chunks_fit(N(p, o), N(p, x), size) ? NULL : "output is not the group's chunks";
  default: return chunks_fit(N(p, x), N(p, o), size) ? NULL : "input is not the group's chunks";
  }
}

/* ---------------------------------------------------------------- compute */

static const char *check_source(const Program *p, const Instr *in) {
  bool ints = in->op == OP_LOAD && (in->i[0] == SRC_TOKENS || in->i[0] == SRC_NEXT_TOKENS || in->i[0] == SRC_CLASSES);
  if (ints ? T(p, in->out) != DT_I32 : !is_float(T(p, in->out))) return "output buffer has the wrong dtype";
  if (in->op == OP_INIT && (in->i[0] < INIT_ZEROS || in->i[0] > INIT_UNIFORM)) return "bad init kind";
  if (in->op == OP_INIT && (in->i[1] < 0 || in->i[1] > (1ll << 48))) return "bad element offset";
  if (in->op == OP_INIT && in->i[3] > 1 &&
      (in->i[3] > (1 << 20) || in->i[4] < 0 || in->i[4] >= in->i[3] || in->i[5] < 1 || in->i[6] < 1 ||
       in->i[5] > (1ll << 40) || in->i[6] > (1ll << 40)))
    return "bad part of a split dim";
  if (in->op == OP_LOAD && (in->i[0] < SRC_TOKENS || in->i[0] > SRC_UNIFORM)) return "bad load kind";
  if (in->op == OP_LOAD && (in->i[1] < 0 || in->i[1] > (1ll << 40))) return "bad row offset";
  if (in->op == OP_LOAD && ints && (in->f[0] < 1 || in->f[0] > 65536)) return "bad token range";
  return NULL;
}

static const char *check_reduction(const Program *p, const Instr *in) {
  int o = in->out, x = in->in[0];
  const Shape *big = in->op == OP_EXPAND || in->op == OP_MAX_BWD ? S(p, o) : S(p, x);
  if (in->i[0] < 0 || in->i[0] >= big->rank) return "axis out of range";
  if (N(p, in->op == OP_EXPAND ? x : in->op == OP_MAX_BWD ? in->in[1] : o) * big->d[in->i[0]] != shape_numel(big))
    return "reduction shapes disagree";
  if (in->op == OP_MAX_BWD && N(p, x) != N(p, o)) return "max_bwd shapes disagree";
  return NULL;
}

static const char *check_norm(const Program *p, const Instr *in) {
  int o = in->out, x = in->in[0];
  if (in->op == OP_LN_BWD_G || in->op == OP_RMS_BWD_G)
    return N(p, o) != last(p, x) || N(p, in->in[1]) != N(p, x) || in->f[0] <= 0 ? "shapes disagree" : NULL;
  if (N(p, in->in[1]) != last(p, x) || (in->op == OP_LAYERNORM && N(p, in->in[2]) != last(p, x)))
    return "gain/bias size";
  if (N(p, o) != N(p, x) || last(p, o) != last(p, x) ||
      (in->nin == 3 && in->op != OP_LAYERNORM && N(p, in->in[2]) != N(p, x)))
    return "shapes disagree";
  return in->f[0] <= 0 ? "eps must be positive" : NULL;
}

/* ops that take integer ids or labels as one input */
static const char *check_indexed(const Program *p, const Instr *in) {
  int o = in->out, x = in->in[0], y = in->in[1];
  switch (in->op) {
  case OP_EMBED:
    if (!is_float(T(p, x)) || S(p, x)->rank != 2 || T(p, y) != DT_I32 || N(p, o) != N(p, y) * S(p, x)->d[1])
      return "embed shapes";
    return NULL;
  case OP_EMBED_BWD:
    if (S(p, o)->rank != 2 || T(p, x) != DT_I32 || !is_float(T(p, y)) || N(p, y) != N(p, x) * S(p, o)->d[1])
      return "embed_bwd shapes";
    return NULL;
  default: /* cross-entropy and its backward */
    if (!is_float(T(p, x)) || T(p, y) != DT_I32 || N(p, x) != N(p, y) * last(p, x)) return "cross_entropy shapes";
    if (in->op == OP_XENT ? N(p, o) != 1 : (N(p, o) != N(p, x) || N(p, in->in[2]) != 1)) return "cross_entropy shapes";
    if (in->op == OP_XENT_BWD && !is_float(T(p, in->in[2]))) return "expected float inputs";
    return NULL;
  }
}

static const char *check_moe(const Program *p, const Instr *in) {
  int o = in->out, x = in->in[0];
  const Shape *big = in->op == OP_MOE_COMBINE_BWD ? S(p, in->in[1]) : S(p, o);
  int64_t e = last(p, x);
  if (big->rank < 2 || big->d[big->rank - 2] != e || N(p, x) * big->d[big->rank - 1] != shape_numel(big))
    return "moe shapes";
  if (in->i[0] < 1 || in->i[0] > e) return "topk out of range";
  if (in->op == OP_MOE_COMBINE_BWD && N(p, o) != N(p, x)) return "moe shapes";
  return NULL;
}

/* the optimizer and the scalars around the loss are f32 */
static const char *check_f32_state(const Program *p, const Instr *in) {
  int o = in->out, x = in->nin ? in->in[0] : -1;
  switch (in->op) {
  case OP_LOSS: return N(p, x) != 1 || T(p, x) != DT_F32 ? "needs an f32 scalar" : NULL;
  case OP_SUMSQ:
    return N(p, o) != 1 || T(p, o) != DT_F32 || T(p, x) != DT_F32 ? "needs f32 gradients and scalar" : NULL;
  case OP_CLIP:
    return N(p, o) != 1 || N(p, x) != 1 || T(p, o) != DT_F32 || T(p, x) != DT_F32 ? "needs f32 scalars" : NULL;
  default: /* adamw, sgd */
    for (int k = 0; k < in->nin; k++)
      if (T(p, in->in[k]) != DT_F32) return "optimizer buffers must be f32";
    if (T(p, o) != DT_F32) return "optimizer buffers must be f32";
    for (int k = 0; k + 1 < in->nin; k++)
      if (N(p, in->in[k]) != N(p, o)) return "optimizer buffers disagree";
    return N(p, in->in[in->nin - 1]) != 1 ? "clip factor must be a scalar" : NULL;
  }
}

static const char *check_einsum(const Program *p, const Instr *in) {
  const Shape *ins[2] = {S(p, in->in[0]), in->nin > 1 ? S(p, in->in[1]) : NULL};
  for (int k = 0; k < in->nin; k++)
    if (T(p, in->in[k]) != T(p, in->in[0]) || !is_float(T(p, in->in[k]))) return "einsum inputs of different dtypes";
  if (in->nin == 1 && T(p, in->out) != T(p, in->in[0])) return "a transpose keeps its dtype";
  return einsum_check(in->spec, in->nin, ins, S(p, in->out));
}

/* Element-wise ops and everything else whose inputs and output have one size. */
static const char *check_elementwise(const Program *p, const Instr *in) {
  int o = in->out;
  const Shape *os = S(p, o);
  if (in->op == OP_ADD || in->op == OP_SUB || in->op == OP_MUL || in->op == OP_DIV) {
    int64_t n = N(p, o), na = N(p, in->in[0]), nb = N(p, in->in[1]);
    return (na != n && nb != n) || n % na || n % nb ? "operands do not broadcast to the output" : NULL;
  }
  if (in->op == OP_SUM_TO) return N(p, o) == 0 || N(p, in->in[0]) % N(p, o) ? "sum_to shapes" : NULL;
  for (int k = 0; k < in->nin; k++)
    if (N(p, in->in[k]) != N(p, o)) return "input and output sizes differ";
  if (in->op == OP_SOFTMAX && in->i[0] && (os->rank < 2 || os->d[os->rank - 1] != os->d[os->rank - 2]))
    return "causal softmax needs square last dims";
  return NULL;
}

static const char *check_compute(const Program *p, const Instr *in) {
  switch (in->op) {
  case OP_FILL: return NULL;
  case OP_INIT:
  case OP_LOAD: return check_source(p, in);
  case OP_EINSUM: return check_einsum(p, in);
  case OP_SUM:
  case OP_MEAN:
  case OP_MAX:
  case OP_EXPAND:
  case OP_MAX_BWD: return check_reduction(p, in);
  case OP_LAYERNORM:
  case OP_RMSNORM:
  case OP_LN_BWD_X:
  case OP_RMS_BWD_X:
  case OP_LN_BWD_G:
  case OP_RMS_BWD_G: return check_norm(p, in);
  case OP_EMBED:
  case OP_EMBED_BWD:
  case OP_XENT:
  case OP_XENT_BWD: return check_indexed(p, in);
  case OP_MOE_DISPATCH:
  case OP_MOE_COMBINE:
  case OP_MOE_COMBINE_BWD: return check_moe(p, in);
  case OP_MSE:
  case OP_MSE_BWD: {
    int x = in->in[0];
    return N(p, x) != N(p, in->in[1]) || (in->op == OP_MSE ? N(p, in->out) != 1 : N(p, in->out) != N(p, x))
               ? "mse shapes"
               : NULL;
  }
  case OP_LOSS:
  case OP_SUMSQ:
  case OP_CLIP:
  case OP_ADAMW:
  case OP_SGD: return check_f32_state(p, in);
  default: return check_elementwise(p, in);
  }
}

/* Ops whose operands are all floats (everything but ids, labels and moves). */
static bool all_float(OpKind op) {
  return op != OP_INIT && op != OP_LOAD && op != OP_EMBED && op != OP_EMBED_BWD && op != OP_XENT && op != OP_XENT_BWD &&
         !(op_info[op].flags & OPF_COMM);
}

const char *instr_verify(const Program *p, const Instr *in) {
  for (int k = 0; k < in->nin; k++)
    if (in->in[k] < 0) return "missing input buffer";
  if (op_info[in->op].flags & OPF_COMM) return check_comm(p, in);
  if (all_float(in->op)) {
    if (in->out >= 0 && !is_float(T(p, in->out))) return "output buffer has the wrong dtype";
    for (int k = 0; k < in->nin; k++)
      if (!is_float(T(p, in->in[k]))) return "expected float inputs";
  } else if (in->out >= 0 && in->op != OP_INIT && in->op != OP_LOAD && !is_float(T(p, in->out))) {
    return "output buffer has the wrong dtype";
  }
  return check_compute(p, in);
}

/* A program that says fp32 holds no bf16 buffer (runs would report the wrong precision). */
static bool precision_holds(const Program *p, FILE *err) {
  for (int b = 0; b < p->nbufs && p->precision == PREC_FP32; b++)
    if (p->bufs[b].dtype == DT_BF16) {
      fprintf(err, "carve: error: program for rank %d says precision fp32, but buffer %d (%s) is bf16\n", p->rank, b,
              p->bufs[b].name);
      return false;
    }
  return true;
}

const Instr *program_init_of(const Program *p, int b) {
  for (int i = 0; i < p->ninit; i++)
    if (p->init[i].op == OP_INIT && p->init[i].out == b) return &p->init[i];
  return NULL;
}

const char *piece_check(const Piece *g, const Shape *whole, int64_t numel) {
  int64_t n = shape_numel(whole), inner = 1, dim;
  if (g->offset < 0 || numel < 0) return "a negative element offset or count";
  if (g->parts < 1 || g->parts > (1 << 20)) return "a split into an implausible number of parts";
  if (g->parts > 1) {
    if (g->axis < 0 || g->axis >= whole->rank || g->part < 0 || g->part >= g->parts || g->len < 1 ||
        __builtin_mul_overflow(g->parts, g->len, &dim) || whole->d[g->axis] != dim)
      return "a split dim that does not fit the tensor";
    for (int k = (int)g->axis + 1; k < whole->rank; k++) inner *= whole->d[k];
    if (inner != g->inner) return "a split dim whose inner size does not fit the tensor";
  }
  if (g->offset > n / g->parts) return "an element offset past the end of its part";
  if (numel > 2 * (n / g->parts) + 1 - g->offset) return "a piece that lies past the end of its part";
  return NULL;
}

/* Why a param or optstate buffer's piece does not fit its whole tensor, or NULL. */
static const char *piece_fits(const Program *p, int b) {
  const Buffer *B = &p->bufs[b];
  const Instr *in = program_init_of(p, b);
  if (!in) return "has no init instruction";
  if (B->dtype != DT_F32) return "is not f32";
  Piece g = piece_of(in);
  int64_t n = shape_numel(&B->shape);
  const char *why = piece_check(&g, &B->whole, n);
  if (why) return why;
  if (g.offset > 0 && B->shape.rank != 1) return "an element offset on a buffer that is not a flat shard";
  if (g.offset == 0 && n != shape_numel(&B->whole) / g.parts && B->shape.rank != 1)
    return "shape does not match its part of the whole tensor";
  return NULL;
}

/* Every parameter and optimizer state buffer is one piece of its whole
   tensor, under a name no other holds (checkpoints find pieces by name). */
static bool pieces_fit(const Program *p, FILE *err) {
  StrMap names = {0};
  for (int b = 0; b < p->nbufs; b++) {
    if (p->bufs[b].kind != BUF_PARAM && p->bufs[b].kind != BUF_OPTSTATE) continue;
    const char *why = piece_fits(p, b);
    if (!why && strmap_get(&names, p->bufs[b].name)) why = "another parameter or state buffer has its name";
    if (!why) strmap_put(&names, p->bufs[b].name, b);
    if (why) {
      fprintf(err, "carve: error: program for rank %d, buffer %d (%s): %s\n", p->rank, b, p->bufs[b].name, why);
      strmap_free(&names);
      return false;
    }
  }
  strmap_free(&names);
  return true;
}

bool program_verify(const Program *p, FILE *err) {
  if (!precision_holds(p, err) || !pieces_fit(p, err)) return false;
  const Instr *lists[2] = {p->init, p->step};
  int counts[2] = {p->ninit, p->nstep};
  for (int s = 0; s < 2; s++)
    for (int i = 0; i < counts[s]; i++) {
      const char *why = instr_verify(p, &lists[s][i]);
      if (why) {
        fprintf(err, "carve: error: program for rank %d, %s instruction %d (%s): %s\n", p->rank, s ? "step" : "init", i,
                op_info[lists[s][i].op].name, why);
        return false;
      }
    }
  return true;
}
