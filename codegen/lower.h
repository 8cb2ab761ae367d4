/* lower.h: helpers the two code generators share (codegen/lower.c). */
#ifndef CARVE_LOWER_H
#define CARVE_LOWER_H
#include "carve.h"

/* Appends a buffer (offset decided by prog_place); *cap is the array's capacity. */
int prog_buf(Program *p, int *cap, const char *name, DType dt, const Shape *s, BufKind kind);
/* A hash of what a single-rank program is made from (the training graph,
   the training options, the seed): the start of a plan id. */
uint64_t prog_recipe(const Graph *g, const Train *t, uint64_t seed);
Instr *prog_emit(PtrVec *list, OpKind op, int out);
Instr *prog_emit1(PtrVec *list, OpKind op, int out, int x); /* one input */
/* Gradient buckets: buffers each spanning several gradient sums, which
   prog_place lays one after another inside it, so that one collective
   reduces them all. Bucket k is bufs[k]; its members are
   member[start[k] .. start[k + 1]). */
typedef struct Buckets {
  int n, cap, nmember, member_cap;
  int *bufs, *start, *member;
} Buckets;
/* Adds a bucket over the n buffers `members` (f32 persistent buffers, in
   the order they are laid out); returns its buffer. */
int prog_bucket(Program *p, int *cap, Buckets *b, const char *name, const int *members, int n);
/* Persistent buffers first (the buckets' members inside their buckets, a
   bucket taking no bytes of its own), then first-fit placement of transient
   buffers (input, act) over their live intervals in step[first, end); sets
   the arena. bk may be NULL. */
void prog_place(Program *p, const PtrVec *step, int first, int end, const Buckets *bk);
/* Moves each communication instruction of step[first, end) up the list, as
   early as the instructions it depends on allow, so that it runs beside the
   compute before its first reader (runtime/overlap.c); before prog_place,
   which then sees the longer lives; layer (NULL: none) gives the layer of
   each parameter buffer, for ZeRO 3's gathers. See lower.c. */
void prog_hoist_comm(const Program *p, PtrVec *step, int first, int end, const Buckets *bk, const int *layer);
/* The optimizer for one parameter: its state buffers (state_shape, zeroed in
   init; `piece`'s geometry attributes say which elements of the whole
   parameter they hold, see piece_of) and the update of target from grad,
   scaled by the clip factor. */
void prog_optimizer(Program *p, int *cap, PtrVec *init, PtrVec *step, const Train *t, const Node *param,
                    const Shape *state_shape, const Instr *piece, int target, int grad, int clip);
/* The clip factor of the global gradient norm, min(1, max_norm / |g|), from
   the n gradient buffers grads (each's sum of squares weighed by weight[k];
   NULL: 1), summed over `group` (-1: this rank's alone); the constant 1 when
   clipping is off. Returns the factor's buffer. */
int prog_clip(Program *p, int *cap, PtrVec *step, const Train *t, const int *grads, const double *weight, int n,
              int group);
/* Is n an add node of param p's gradient sum (autodiff names them so)? */
bool grad_chain_of(const Graph *g, const Node *n, const Node *p);
/* Precision: per node, the dtype of its buffers. Under bf16 a float node is
   bf16, except scalars (the loss and its seed) and parameter gradients and
   their contributions, which stay f32 (they are summed into f32
   accumulators). Parameters are f32 masters (their bf16 copies: BUF_WORK). */
DType *value_dtypes(const Graph *g, Precision prec);
/* The bf16 working copy of param buffer `master` (shape s): a persistent
   buffer, cast from the master where `list` says. */
int prog_work_copy(Program *p, int *cap, PtrVec *list, const char *name, const Shape *s, int master);
/* The dtype an einsum's two operands (buffers ins[0], ins[1]) are read in: bf16 if either is. */
DType prog_einsum_dtype(const Program *p, const int *ins);
/* Emits a cast of buffer b to dt into `into` (-1: a new act buffer);
   returns the buffer cast into. */
int prog_cast(Program *p, int *cap, PtrVec *list, int b, DType dt, int into);
/* Copies the instruction lists into the program. */
void prog_finish(Program *p, const PtrVec *init, const PtrVec *step);

/* Programs 0..n-1 from make(mctx, i), handed to each(program, ctx) in
 * order on a second thread while the next is made (codegen/pipe.c); false
 * once `each` fails, and none is handed over after that. */
typedef const Program *(*RankMaker)(void *mctx, int i);
bool ranks_pipelined(int n, RankMaker make, void *mctx, RankSink each, void *ctx);

#endif
