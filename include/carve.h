/* carve.h: the structures that cross phases, and every phase's entry points.
 *
 * Read it as a table of contents. Each banner names a source file or a
 * directory; below it are the functions that file offers to the others.
 *
 *   model.graph --lex/parse--> Ast --elaborate--> Graph (forward)
 *               --autodiff--> Graph (forward + backward) + Train (optimizer)
 *               --codegen--> Program (flat instructions over numbered buffers;
 *                            codegen_ranks: one per rank of a Layout)
 *               --runtime--> losses (ranks talk through a Transport: MPI)
 *
 * The compile chain is written once, as a pass list: frontend_training
 * (load, check, autodiff) and codegen/driver.c (plan, codegen).
 *
 * Three kinds of failure, three mechanisms:
 *   - user input: a located message through Diag (file:line:col, source line,
 *     caret), the phase returns failure, the command exits 1;
 *   - a broken invariant: CARVE_ASSERT, which names file and line (a bug);
 *   - a failed external call (BLAS, MPI, I/O): carve_fatal with the call named.
 */
#ifndef CARVE_H
#define CARVE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CARVE_VERSION "0.1.0"
#define CARVE_PROGRAM_FORMAT 4

#define MAXRANK 8 /* tensor rank limit */
#define MAXIN 4   /* inputs per node / instruction */

/* ======================================================================
 * common/util.c: memory, strings, errors
 * ====================================================================== */

#define CARVE_ASSERT(cond, msg)                                                                                        \
  do {                                                                                                                 \
    if (!(cond)) carve_bug(__FILE__, __LINE__, #cond, msg);                                                            \
  } while (0)

_Noreturn void carve_bug(const char *file, int line, const char *cond, const char *msg);
_Noreturn void carve_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The compile arena: everything the frontend, autodiff and codegen allocate
 * lives until arena_reset(). Allocation never fails silently. Each thread
 * has its own arena (a thread may read what another allocated, while that
 * one keeps it). */
void *arena_alloc(size_t size);
char *arena_strdup(const char *s);
char *arena_strndup(const char *s, size_t n);
char *arena_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void arena_reset(void);
/* A point in the arena's history: arena_release(m) frees everything
 * allocated after arena_mark() returned m (what a loop makes and drops each
 * round, such as one rank's program), and keeps everything before it. */
typedef struct ArenaMark {
  void *block;
  size_t used;
} ArenaMark;
ArenaMark arena_mark(void);
void arena_release(ArenaMark m);
/* Another arena for the same thread: arena_switch(&a) swaps the thread's
 * arena with a (so a second call swaps back). What is made in one while the
 * other holds something can be released without touching it. arena_free
 * frees the blocks of an arena that is not the current one. */
typedef struct Arena {
  void *head, *spare;
} Arena;
void arena_switch(Arena *a);
void arena_free(Arena *a);

void *xmalloc(size_t size); /* heap, checked; for long-lived runtime data */
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);

/* A growable array of pointers or ints in the arena. */
typedef struct {
  void **v;
  int n, cap;
} PtrVec;
void ptrvec_push(PtrVec *pv, void *p);

uint64_t hash_bytes(const void *p, size_t n, uint64_t seed); /* FNV-1a 64 */
uint64_t hash_str(const char *s);
char *read_file(const char *path, size_t *len); /* heap; NULL + errno on failure; no limit */

/* How much of each kind of input file carve reads into memory at most. */
#define LIMIT_TEXT                                                                                                     \
  ((size_t)16 << 20)                       /* a model, cluster or plan: the frontend and the                           \
                                              JSON reader hold ~100 bytes per byte of text */
#define LIMIT_TOKENS ((size_t)64 << 30)    /* a token file, or the text carve data reads */
#define LIMIT_PROGRAM ((size_t)1 << 30)    /* a rank program (a big plan's rank: tens of MB) */
#define LIMIT_MANIFEST ((size_t)256 << 20) /* a checkpoint manifest, a safetensors header */
/* Opens path for reading if it is a regular file of at most limit bytes, and
 * never blocks: a FIFO, a device, a socket or a directory is refused before
 * it is opened for reading. -1 and the reason in why (n bytes) on failure. */
int open_input(const char *path, size_t limit, size_t *size, char *why, size_t n);
/* The whole of a regular file of at most limit bytes, NUL-terminated, on the
 * heap; NULL and the reason in why on failure. */
char *read_file_limit(const char *path, size_t limit, size_t *len, char *why, size_t n);
bool read_exact(int fd, void *buf, size_t n); /* false on an error or a short file */

/* A map from strings to ints (open addressing, grown at half full). Keys are
 * not copied: they must outlive the map (arena strings do). Zero-initialise. */
typedef struct StrMap {
  const char **keys;
  int *vals;
  int n, cap;
} StrMap;
int *strmap_get(const StrMap *m, const char *key);       /* the value's slot, NULL if absent */
int *strmap_put(StrMap *m, const char *key, int if_new); /* the slot, made with if_new if absent */
void strmap_free(StrMap *m);
/* Renames the finished temporary file tmp to path, unless path exists and is
   not a regular file (a device, a directory, a FIFO: renaming would replace
   it, /dev/null included): then false with errno EEXIST. */
bool rename_into_place(const char *tmp, const char *path);
/* Whether path may be written (replaced): false, with why, when something
   that is not a regular file is in the way, which rename_into_place would
   refuse only after the work of writing. */
bool output_free(const char *path, char *why, size_t n);
/* Every file carve writes goes through these: temp_beside creates a new file
   beside path (same folder, so the rename is atomic) exclusively, never
   opening an existing file or a link someone planted; *tmp gets its name
   (arena). temp_close(f, tmp, path, keep) with keep flushes it to disk,
   drops its pages from the page cache (a big plan's programs would fill
   memory with them), closes it and renames it into place
   (rename_into_place); without keep (the writing failed), or on any
   failure, it closes and removes the temporary file and returns false with
   errno saying why. f may be NULL (temp_beside failed): false. Neither
   prints. */
FILE *temp_beside(const char *path, const char **tmp);
bool temp_close(FILE *f, const char *tmp, const char *path, bool keep);
/* Flushes a folder's entries (a rename in it) to disk. */
bool sync_dir(const char *dir);
/* FNV-1a 64 over 8-byte words (then the tail bytes): checksums of big data.
 * It starts from state FNV64_BASIS ^ seed, so hashing on from state h (after
 * a multiple of 8 bytes) is hash_words(more, n, h ^ FNV64_BASIS). */
#define FNV64_BASIS 1469598103934665603ull
uint64_t hash_words(const void *p, size_t n, uint64_t seed);
double now_seconds(void);
/* CPU time this process has used (user and system), in seconds. */
double cpu_seconds(void);
/* Re-executes the program with OMP_WAIT_POLICY=PASSIVE unless it is set
 * (carve does so under an MPI launcher: ranks share the cores). */
void carve_passive_threads(char **argv);
const char *fmt_si(double v, char *buf, size_t n); /* 1.23G, 45.6M ... */
/* v in decimal, as %lld prints it, into out (room for 21 characters and the
 * NUL); returns its length. For writers of large text files. */
int int_str(int64_t v, char *out);
const char *fmt_bytes(double v, char *buf, size_t n);
/* Whether two names are the same but for their numbers ("layers.3.x" and
   "layers.7.x": the same op of another layer). */
bool same_but_numbers(const char *a, const char *b);

/* common/json.c: reading carve's own JSON files (plans) */
typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonKind;
typedef struct Json {
  JsonKind kind;
  bool boolean;
  double num;
  const char *str;
  int n; /* items of an array or object */
  struct Json **items;
  const char **keys; /* object keys */
} Json;
typedef struct JsonError {
  size_t offset;    /* byte where reading stopped */
  int line, col;    /* the same, 1-based */
  const char *what; /* what was wrong there */
} JsonError;
/* text[len] must be 0. NULL on anything but one well-formed JSON value
 * (trailing white space allowed), with where and why in *e if e is given. */
Json *json_read(const char *text, size_t len, JsonError *e);
/* The same for a NUL-terminated text, with only the byte offset of an error. */
Json *json_parse(const char *text, size_t *error_offset);
const Json *json_get(const Json *obj, const char *key);
double json_num(const Json *obj, const char *key, double dflt);
const char *json_str(const Json *obj, const char *key, const char *dflt);
/* Writes s as a JSON string, quoted and escaped. */
void json_write_str(FILE *f, const char *s);

/* ======================================================================
 * frontend/lex.c: tokens and located diagnostics
 * ====================================================================== */

typedef struct Source {
  const char *path; /* as the user named it */
  const char *text; /* NUL-terminated */
  size_t len;
} Source;

typedef enum { TK_IDENT, TK_NUM, TK_STR, TK_PUNCT, TK_NEWLINE, TK_EOF } TokenKind;

typedef struct Token {
  TokenKind kind;
  const char *p; /* points into Source.text */
  int len;
  int line, col; /* 1-based */
  double num;    /* TK_NUM */
  bool is_int;   /* TK_NUM written without '.' or exponent */
  bool space_before;
  bool bracketed; /* TK_NEWLINE inside () or []: not a statement end */
  bool bad_line;  /* the lexer reported an error on this line: the parser stays quiet there */
  const Source *src;
} Token;

typedef struct Diag {
  FILE *out;
  int errors;
  int max_errors; /* stop reporting after this many */
} Diag;

void diag_init(Diag *d, FILE *out);
/* "path:line:col: error: msg", the source line, a caret under the column. */
void diag_error(Diag *d, const Token *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void diag_note(Diag *d, const Token *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void diag_plain(Diag *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "path: error: msg", for errors that concern a whole file */
void diag_file(Diag *d, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Splits src into tokens (arena). Lexical errors go to d; the token array
 * always ends with TK_EOF. Newlines inside () and [] are marked bracketed:
 * the parser reads through them, error recovery stops at them. */
Token *lex(const Source *src, Diag *d, int *ntok);
bool tok_is(const Token *t, const char *s);

/* ======================================================================
 * frontend/parse.c: the syntax tree
 * ====================================================================== */

typedef enum { EX_NUM, EX_IDENT, EX_STR, EX_BIN, EX_NEG, EX_CALL, EX_LIST } ExprKind;

typedef struct Expr Expr;
struct Expr {
  ExprKind kind;
  const Token *tok; /* where it starts: the operator for EX_BIN */
  char op;          /* EX_BIN: + - * / and 'f' for floor division // */
  const char *name; /* EX_IDENT, EX_CALL callee, keyword of an argument */
  double num;
  bool is_int;
  const char *str; /* EX_STR contents */
  Expr *lhs, *rhs; /* EX_BIN, EX_NEG (lhs) */
  Expr **args;     /* EX_CALL arguments, EX_LIST elements */
  const char **kw; /* keyword of each argument or NULL */
  const Token **kw_toks;
  int nargs;
};

typedef enum { ST_MODEL, ST_DIM, ST_PRESET, ST_INPUT, ST_PARAM, ST_ASSIGN, ST_REPEAT, ST_IF } StmtKind;

typedef struct Stmt Stmt;
struct Stmt {
  StmtKind kind;
  const Token *tok;   /* first token */
  const char **names; /* ST_DIM, ST_PRESET keys, ST_ASSIGN targets, ST_INPUT/PARAM name */
  const Token **name_toks;
  Expr **exprs; /* ST_DIM/ST_PRESET values, ST_ASSIGN value (1), ST_REPEAT/IF count */
  int nnames;
  const char *label; /* ST_MODEL name, ST_PRESET preset name, ST_REPEAT prefix */
  Expr **dims;       /* ST_INPUT/ST_PARAM shape */
  int ndims;
  const char *dtype; /* ST_INPUT */
  const Token *dtype_tok;
  Expr *init;            /* ST_INPUT/ST_PARAM initialiser or data source, may be NULL */
  Stmt **body, **orelse; /* ST_REPEAT, ST_IF */
  int nbody, norelse;
};

typedef struct Ast {
  const Source *src;
  Stmt **stmts;
  int nstmts;
} Ast;

/* Parses a whole file; recovers at statement boundaries, so several errors
 * can be reported. Returns NULL only if the lexer produced nothing usable. */
Ast *parse(const Source *src, Diag *d);

/* ======================================================================
 * frontend/graph.c and frontend/elab.c: the graph IR
 * ====================================================================== */

typedef enum {
#define OP(name, text, nin, iattrs, fattrs, flags) OP_##name,
#include "ops.def"
#undef OP
  OP_COUNT
} OpKind;

enum { OPF_GRAPH = 1, OPF_PROG = 2, OPF_UNARY = 4, OPF_COMM = 8 };

typedef struct OpInfo {
  const char *name;
  int nin;
  const char *iattrs, *fattrs;
  int flags;
} OpInfo;
extern const OpInfo op_info[OP_COUNT];
int op_lookup(const char *name); /* -1 if unknown */

typedef enum { DT_F32, DT_I32, DT_BF16 } DType;
const char *dtype_name(DType t);
int dtype_size(DType t);

typedef struct Shape {
  int rank;
  int64_t d[MAXRANK];
} Shape;
int64_t shape_numel(const Shape *s);
bool shape_eq(const Shape *a, const Shape *b);
char *shape_str(const Shape *s); /* "[8,1024,768]" in the arena */

/* Initialisers of parameters and data sources of inputs. */
typedef enum {
  INIT_ZEROS,
  INIT_ONES,
  INIT_CONST,
  INIT_NORMAL,
  INIT_UNIFORM,
  SRC_TOKENS,
  SRC_NEXT_TOKENS,
  SRC_CLASSES,
  SRC_NORMAL,
  SRC_UNIFORM,
  SRC_STAGE, /* a pipeline stage graph's activation from the stage before (planner/stages.c): it carries a
                gradient back; never in a program */
  INIT_COUNT
} InitKind;
extern const char *const init_names[INIT_COUNT];

typedef enum { PH_FORWARD, PH_BACKWARD } Phase;

typedef struct Node {
  OpKind op;
  int id;
  const char *name; /* unique in the graph: "layers.3.w_fc", "layers.3.h" */
  int nin;
  int in[MAXIN];
  Shape shape;
  const char *dimname[MAXRANK]; /* the symbolic dim each axis came from, or NULL */
  DType dtype;
  Phase phase;
  const Token *tok; /* source location; NULL for nodes autodiff made */
  int layer;        /* iteration of the outermost repeat block, -1 outside */
  int origin;       /* backward nodes: the forward node whose rule made it; -1 otherwise */
  /* attributes (meaning per op, see ops.def) */
  int64_t i[2];
  double f[2];
  char labels[MAXIN + 1][MAXRANK + 1]; /* einsum: labels per input, then output */
  InitKind init;                       /* PARAM initialiser / INPUT data source */
  double init_a, init_b;
} Node;

/* A parameter or an input: a value the graph does not compute. */
static inline bool is_leaf(const Node *n) { return n->op == OP_PARAM || n->op == OP_INPUT; }

typedef struct DimVal {
  const char *name;
  int64_t value;
  bool per_batch; /* computed from the dim named batch (not set by a preset or --set): a replica given a share of
                     the batch computes its own (an MoE capacity), see graph_dim_per_batch */
} DimVal;

typedef struct Graph {
  const char *model;
  Node **nodes;
  int n, cap;
  int loss;     /* node id of the scalar loss, -1 before it is known */
  int nfwd;     /* nodes [0, nfwd) are the forward graph */
  int *grad;    /* after autodiff: grad[param node id] = node id or -1 */
  DimVal *dims; /* bound dims, in declaration order */
  int ndims;
  int *copies;         /* a pipeline stage's graph (planner/stages.c): per forward node, how many stages hold a copy of
                          this parameter (a tied one, read in several stages), summed over them once per step; NULL,
                          or 0 or 1: this stage's alone */
  bool *copied_before; /* with copies: per forward node, a tied parameter an earlier stage holds too */
} Graph;

Graph *graph_new(const char *model);
Node *graph_add(Graph *g, OpKind op, const char *name);
Node *graph_node(const Graph *g, int id);
int64_t graph_dim(const Graph *g, const char *name, int64_t fallback);
/* Whether dim d of node n scales with the batch: it is the dim named batch,
   or one computed from it (DimVal.per_batch). Data-parallel replicas run the
   model at their share of the batch, so such a dim is theirs too. */
bool graph_dim_per_batch(const Graph *g, const Node *n, int d);
/* Checks the invariants every phase relies on (inputs precede users, shapes
 * consistent with ops). Returns false and prints the first violation. */
bool graph_verify(const Graph *g, FILE *err);
void graph_dump(const Graph *g, FILE *out);

/* Options for turning source text into a graph. */
typedef struct Override {
  const char *name;
  int64_t value;
  bool used;
} Override;

typedef struct ElabOptions {
  const char *preset; /* NULL for none */
  Override *sets;     /* --set name=value */
  int nsets;
} ElabOptions;

/* Binds dims (defaults, preset, overrides), expands repeat and if blocks,
 * infers and checks every shape. Returns NULL after reporting errors. */
Graph *elaborate(const Ast *ast, const ElabOptions *opt, Diag *d);

/* Convenience: read, parse, elaborate. Errors go to d. */
Graph *frontend_load(const char *path, const ElabOptions *opt, Diag *d);
/* The model elaborated at batch / microbatches (the dim named "batch"). */
Graph *frontend_load_microbatch(const char *path, const ElabOptions *opt, int microbatches, Diag *d);
/* The same for text in memory; `name` is what messages call it. */
Graph *frontend_load_text(const char *name, const char *text, size_t len, const ElabOptions *opt, Diag *d);
/* The front of the compile chain (the rest: codegen/driver.c): load and
 * check the model at batch / microbatches, differentiate it with the loss
 * gradient seeded with 1 / scale. A failed load ends with the count of
 * errors. dump, dump_training: where to print the forward graph and the
 * training graph (NULL: nowhere). NULL after the errors. */
typedef struct Front {
  const char *path;
  const ElabOptions *eo;
  int microbatches, scale; /* 0 means 1 */
  FILE *dump, *dump_training;
} Front;
Graph *frontend_training(const Front *f, FILE *err);
/* Resolves a model argument: a path, or the name of a shipped model. */
const char *model_resolve(const char *arg);
/* Parses "a=1,b=2" into overrides (appends); false with a message on error. */
bool parse_sets(const char *text, Override **sets, int *nsets, FILE *err);

/* ======================================================================
 * frontend/rules.c: the rule book of splits
 * ====================================================================== */

/* The dims of tensor t of node n (t < n->nin: input t; t == n->nin: the
 * output) that the op's kernel needs whole on every rank, one bit per dim.
 * The planner offers no strategy that splits one of them when its plan is
 * to be lowered (PlanOptions.lowerable); the code generator runs an op whose
 * split would cut one whole instead (kernel_takes). */
uint32_t op_whole_dims(const Graph *g, const Node *n, int t);

/* ======================================================================
 * frontend/autodiff.c: forward graph -> training graph
 * ====================================================================== */

typedef enum { OPT_ADAMW, OPT_SGD } OptKind;

/* fp32: every float in f32. bf16: mixed precision: f32 master parameters,
 * optimizer state and gradient accumulators; a bf16 working copy of each
 * parameter made once per step; activations and their gradients in bf16;
 * products bf16 x bf16 with f32 accumulation; statistics, the loss and norms
 * in f32 (docs/program-format.md, "Precision"). */
typedef enum { PREC_FP32, PREC_BF16 } Precision;
const char *precision_name(Precision p); /* "fp32", "bf16" */
/* for reports: "fp32", "bf16 mixed precision"; with detail, what mixed keeps in f32 */
const char *precision_describe(Precision p, bool detail);
/* "fp32" or "bf16" (also "mixed", the planner's old name); false if neither */
bool precision_parse(const char *s, Precision *p);

typedef struct Train {
  OptKind opt;
  double lr, beta1, beta2, eps, wd, momentum, clip;
  int warmup;       /* steps of linear learning-rate warm-up */
  int microbatches; /* gradient accumulation: the graph is one microbatch */
  Precision precision;
} Train;

void train_defaults(Train *t);
/* Appends backward nodes for every parameter that reaches the loss; sets
 * g->grad. The loss gradient is seeded with 1/microbatches. */
bool autodiff(Graph *g, int microbatches, FILE *err);
/* Whether op y's gradient flows into its input k: ids, labels and routing masks take none. */
bool op_differentiates(const Node *y, int k);
/* Per forward node of g: whether it has a gradient (an f32 value that depends, through inputs ops
   differentiate, on a parameter or on a pipeline stage's received activation, SRC_STAGE). */
bool *graph_trained(const Graph *g);

/* ======================================================================
 * frontend/summary.c: what `carve check` prints
 * ====================================================================== */

typedef struct Summary {
  int64_t params, param_tensors;
  double flops_einsum_fwd, flops_other_fwd; /* forward graph */
  double flops_einsum, flops_other;         /* whole training graph */
  int64_t act_bytes;                        /* forward activations kept for backward */
  int64_t param_bytes;
  int op_count[OP_COUNT]; /* forward graph */
  int nodes_fwd, nodes_total;
} Summary;

double node_flops(const Graph *g, const Node *n);
void summarize(const Graph *g, Summary *s);
void summary_print(const Graph *g, const Summary *s, FILE *out);

/* ======================================================================
 * codegen/: programs
 * ====================================================================== */

/* work: a parameter's bf16 working copy, made from the f32 master each step */
typedef enum { BUF_PARAM, BUF_GRAD, BUF_OPTSTATE, BUF_INPUT, BUF_ACT, BUF_SCALAR, BUF_WORK } BufKind;
#define BUF_KINDS (BUF_WORK + 1)
extern const char *const buf_kind_names[];

typedef struct Buffer {
  const char *name;
  DType dtype;
  Shape shape;
  BufKind kind;
  int64_t offset; /* bytes into the rank's arena */
  int64_t bytes;
  Shape whole; /* param, optstate: the whole tensor this buffer holds a piece of (its init says which) */
} Buffer;

#define MAXIATTR 7 /* integer attributes of an instruction */
typedef struct Instr {
  OpKind op;
  int out; /* buffer id or -1 */
  int nin;
  int in[MAXIN];
  int64_t i[MAXIATTR];
  double f[5];
  char spec[64]; /* einsum: "abc,cd->abd" */
} Instr;
/* Does the instruction move data between ranks (through the transport)? */
static inline bool instr_comm(const Instr *in) { return (op_info[in->op].flags & OPF_COMM) != 0; }

typedef struct Program {
  const char *model;
  uint64_t plan_id; /* the same in every rank program of one plan, different for another plan */
  int rank, world;
  uint64_t seed;
  int microbatches;
  Precision precision;
  int64_t tokens_per_step; /* 0 when the model has no token input */
  int64_t vocab;           /* size of the token space, 0 if none */
  double flops_per_step;   /* model FLOPs of one step: what GFLOP/s counts */
  Buffer *bufs;
  int nbufs;
  int64_t arena_bytes;
  Instr *init; /* run once */
  int ninit;
  Instr *step; /* run every step */
  int nstep;
  /* rank groups the collectives name: group g holds group_size[g] world
     ranks, ascending, in group_ranks[g] */
  int ngroups;
  int *group_size;
  int **group_ranks;
} Program;

/* Which elements of a whole tensor a rank's buffer holds (a param or
 * optstate buffer's init attributes offset, axis, parts, part, len, inner):
 * element e of the buffer is element q = offset + e of the rank's part (a
 * ZeRO shard starts at `offset`); with dim `axis` split in `parts` (the
 * part's dims around it: len, inner), element (o, j, r) of the part is
 * element (o, part x len + j, r) of the whole. An index at or past the
 * whole's element count is a shard's padding. */
typedef struct Piece {
  int64_t offset, axis, parts, part, len, inner;
} Piece;
static inline Piece piece_of(const Instr *init) {
  return (Piece){init->i[1], init->i[2], init->i[3] > 1 ? init->i[3] : 1, init->i[4], init->i[5], init->i[6]};
}
static inline int64_t piece_index(const Piece *g, int64_t e) {
  int64_t q = g->offset + e;
  if (g->parts == 1) return q;
  int64_t o = q / (g->len * g->inner), j = q / g->inner % g->len, r = q % g->inner;
  return (o * g->parts * g->len + g->part * g->len + j) * g->inner + r;
}
/* The init instruction of buffer b, or NULL. */
const Instr *program_init_of(const Program *p, int b);
/* Why piece g, of numel elements, does not fit a whole tensor of shape
   `whole`, or NULL: a split dim the shape has, an offset inside the part, at
   most one chunk of padding past it (so no index computed from the piece
   can overflow). Programs (codegen/verify.c) and checkpoints (store.c) hold
   their pieces to it. */
const char *piece_check(const Piece *g, const Shape *whole, int64_t numel);

/* Lowers a training graph to one single-rank program. */
Program *codegen(const Graph *g, const Train *t, uint64_t seed);
/* How a plan splits training over ranks (codegen/distribute.c): dp
 * data-parallel replicas of a pipeline of pp devices, each device holding v
 * virtual stages (v > 1: interleaved), m microbatches per replica and step;
 * each replica on tp ranks that split its tensors as a plan says.
 * Rank = (device x dp + replica) x tp + position. */
struct Plan;
typedef struct Layout {
  int dp, pp, v, microbatches;
  int tp;                          /* ranks splitting each replica's tensors (1: none) */
  const struct Plan *const *plans; /* tp > 1: per virtual stage, the intra-operator plan whose
                                      shardings (mesh axis 1) the ranks of a replica follow */
  int schedule;                    /* SchedKind (planner.h) */
  int zero;                        /* ZeRO stage 0-3 over each device's replicas */
  int recompute;                   /* 0 none, 1 selective, 2 full (planner.h RC_*), for every stage ... */
  const int *stage_recompute;      /* ... or per pipeline stage (NULL: recompute) */
  const int *stage_dp;             /* per pipeline stage, its replicas (NULL: dp for every stage) */
  const int *stage_last;           /* per virtual stage, its last layer; NULL: equal spans */
  int layers_want;                 /* layers to cut a model without repeat blocks into (0: one per stage) */
  bool sp;                         /* sequence parallelism: the whole ops between tensor-parallel products
                                      (norms, elementwise, residuals) split along the sequence over tp */
  bool first_of_stage;             /* make only the first rank of each pipeline device, in device order
                                      (what a device holds: every replica and position takes as much) */
} Layout;
/* Graph instances ("units") per microbatch: the lcm of the stages' replica
 * counts (each replica of a stage runs units / its replicas of them). */
int layout_units(const Layout *L);
int layout_world(const Layout *L); /* ranks */
/* Receives each rank's program in turn; the program lives in the arena only
 * until the call returns (copy what must outlive it). false stops the ranks. */
typedef bool (*RankSink)(const Program *p, void *ctx);
/* One program per rank, handed to `each` in rank order, one at a time: the
 * analysis the ranks share is made once; a rank's program is made, handed
 * over and freed before the next, so memory holds one program, not world of
 * them. g is one unit: built at batch / (m units), its loss gradient seeded
 * with 1 / (m units). false with a message when the layout does not fit the
 * model, or when `each` returns false (it says why). */
bool codegen_ranks(const Graph *g, const Train *t, uint64_t seed, const Layout *L, RankSink each, void *ctx, FILE *err);
/* Whether op n's kernel runs on the parts a tp split gives it (out: the dim
 * of its value split over the ranks, in[k]: input k's; -1 whole): none of
 * them a dim the rule book (op_whole_dims) keeps whole. Ops it refuses run
 * whole. */
bool kernel_takes(const Graph *g, const Node *n, int out, const int8_t *in);

/* codegen/driver.c: the compile chain as a pass list (load, check, autodiff:
 * frontend_training; plan; codegen) and layout text as a Layout. */
struct Manual;
/* Model file -> the one program of a single rank (t->microbatches of
 * gradient accumulation); *graph (if given) gets the training graph. NULL
 * after the errors. */
Program *compile_program(const char *model_path, const ElabOptions *eo, const Train *t, uint64_t seed, Graph **graph,
                         FILE *err);
/* Model file -> one program per rank of L: loads it at the size of one
 * microbatch of one replica, differentiates it, plans tensor parallelism
 * asked for by hand (plan_tp) and hands each rank's program to `each`. */
bool compile_layout(const char *model_path, const ElabOptions *eo, const Train *t, uint64_t seed, const Layout *L,
                    RankSink each, void *ctx, FILE *err);
/* The plan of tensor parallelism by hand: training graph g split over a
 * 1 x tp mesh with only strategies codegen lowers. */
const struct Plan *plan_tp(const Graph *g, int tp, FILE *err);
/* Layout text, parsed (manual_parse), as a Layout: keys left out are 1
 * replica, 1 stage, no tp, `microbatches`, 1F1B, ZeRO 0, no recomputation. */
Layout layout_of_manual(const struct Manual *m, int microbatches);
/* Program files: versioned text with a checksum. */
bool program_write(const Program *p, const char *path, FILE *err);
Program *program_read(const char *path, FILE *err);
void program_explain(const Program *p, FILE *out);
void instr_print(const Program *p, const Instr *in, FILE *out, bool names);

/* codegen/verify.c: what every program must satisfy, checked before it is
 * written and again when it is read (a kernel then never reads or writes
 * outside a buffer). NULL or the reason an instruction is wrong. */
const char *instr_verify(const Program *p, const Instr *in);
/* false with "program for rank R, step instruction I (op): why" on err */
bool program_verify(const Program *p, FILE *err);
/* codegen/rendezvous.c: whether a plan's programs would deadlock on a
 * transport whose sends wait for their receives (NCCL) rather than buffer
 * them (docs/distributed.md, "Deadlock under rendezvous"). Each rank's
 * communication instructions are kept as its program is added (in any
 * order; the program may be freed after), then one step is simulated. A plan
 * of more than 65536 ranks or 2^25 communication instructions is not kept
 * or checked (rendezvous_checked says so; the check then passes). */
typedef struct Rendezvous Rendezvous;
Rendezvous *rendezvous_new(int world);
void rendezvous_add(Rendezvous *z, const Program *p);
bool rendezvous_checked(const Rendezvous *z);
/* true when every rank gets through the step; false with the stuck ranks
   and their instructions named on err ("rank 3 at step instruction 120
   (send to rank 4, tag 17) waits for rank 4, which is at ..."). */
bool rendezvous_check(Rendezvous *z, FILE *err);
void rendezvous_free(Rendezvous *z);
/* The same over the n programs of ranks 0 .. n-1. */
bool programs_rendezvous(const Program *const *ps, int n, FILE *err);

/* This rank's position in group g, or -1. */
int group_pos(const Program *p, int64_t g, int rank);
/* "ab,bc->ac" into its operands' labels (one input: parts[1] is the output);
 * false if malformed. */
bool einsum_parse(const char *spec, int nin, char parts[3][MAXRANK + 1]);
/* NULL or what is wrong with spec for these shapes. */
const char *einsum_check(const char *spec, int nin, const Shape *const *in, const Shape *out);

/* ======================================================================
 * runtime/: execution (runtime/backend.h: the compute backends)
 * ====================================================================== */

typedef struct TokenData {
  const char *path;
  int64_t vocab;
  int64_t n;
  uint16_t *tok;
} TokenData;

TokenData *tokens_read(const char *path, FILE *err);
void tokens_free(TokenData *td);

/* runtime/transport.c: how ranks talk. The interpreter sees only this
 * table; an implementation fills it (MPI over CPU buffers now; NCCL, or CUDA
 * staged through host memory, later). Every call returns false after
 * printing what failed, never hangs on a peer that died (the launcher ends
 * the job; a peer that stops answering meets the deadline), and reduces by
 * sum. */
typedef struct Transport Transport;
struct Transport {
  const char *name; /* "local" or "mpi" */
  int rank, world;
  /* seconds any one call may wait for other ranks (0: forever); past it the
     job ends with a message naming `doing` and whom it waited for */
  double timeout;
  char doing[96]; /* what this rank is doing ("step 3, instruction 42 (all_reduce)"), or empty */
  bool threads;   /* another thread may make the calls (one thread at a time): communication can overlap */
  /* 1 (the default): the step waits for the call in progress, which should
     poll its peers flat out; 0: compute goes on beside it, so a wait that
     takes a while sleeps between polls and leaves the cores to the compute.
     Read and written with __atomic builtins (runtime/overlap.c sets it). */
  int hurry;
  /* Makes a communicator per group of a program (every rank calls it with
     the same list, in the same order: it is collective over the world). */
  bool (*groups)(Transport *t, int n, const int *sizes, int *const *ranks);
  /* Collectives move elements of one dtype (counts are in elements); sums
     of bf16 add in f32 and round. */
  bool (*all_reduce)(Transport *t, int group, void *buf, int64_t n, DType dt);
  /* out holds chunk x group size elements: the members' chunks in rank order */
  bool (*all_gather)(Transport *t, int group, const void *in, int64_t chunk, void *out, DType dt);
  /* in holds chunk x group size elements; out gets the sum of this member's chunk */
  bool (*reduce_scatter)(Transport *t, int group, const void *in, int64_t chunk, void *out, DType dt);
  /* chunk k of in goes to member k; out gets every member's chunk for this one, in rank order */
  bool (*all_to_all)(Transport *t, int group, const void *in, int64_t chunk, void *out, DType dt);
  /* send returns at once (the data is copied or in flight; buf may be reused);
     recv blocks until the message from peer with this tag has arrived */
  bool (*send)(Transport *t, const void *buf, int64_t bytes, int peer, int tag);
  bool (*recv)(Transport *t, void *buf, int64_t bytes, int peer, int tag);
  bool (*flush)(Transport *t); /* waits until this rank's sends are done */
  /* every rank: true when every rank passed true (the checks before a run) */
  bool (*agree)(Transport *t, bool ok);
  double (*sum)(Transport *t, double v); /* over the world */
  double (*max)(Transport *t, double v);
  /* every rank's `bytes` bytes, in rank order, to every rank (traces) */
  bool (*gather_all)(Transport *t, const void *in, int64_t bytes, void *out);
  /* rank root's `bytes` bytes into every rank's buf (a NCCL id) */
  bool (*broadcast)(Transport *t, void *buf, int64_t bytes, int root);
  /* ends every rank's process now (after a rank-local error mid-step, when
     the others may be waiting on this one) */
  void (*abort)(Transport *t, int code); /* does not return */
  void (*close)(Transport *t);
  void *impl;
};
/* One process, world 1: collectives over one member are copies. */
Transport *transport_local(void);
/* MPI, when this process was started by an MPI launcher (the launcher's
   environment says so); otherwise the local transport. */
Transport *transport_open(int *argc, char ***argv);
bool transport_launched(void);
/* The deadline's message: this rank, `doing` (Transport.doing when the
   wait began), whom it waited for and the call; the caller then ends the
   process. */
void transport_overdue(const Transport *t, const char *doing, const char *whom, const char *call);
/* "the members of group g (ranks 0 2 4)", for those messages */
void transport_members(char *buf, size_t n, int g, int size, const int *ranks);

typedef struct RunOptions {
  int steps;
  const TokenData *data; /* NULL: synthetic tokens from the seed */
  int log_every;         /* print a line every N steps (1 = every step) */
  bool quiet;
  FILE *out;
  double *losses;           /* if non-NULL, receives the loss of each step */
  int data_step;            /* if > 0, every step loads the data of this step (tests) */
  bool profile;             /* time every instruction; print time by opcode at the end */
  Transport *net;           /* NULL: the local transport (world 1) */
  const char *save_params;  /* after the run, each rank writes PATH.rankN */
  double *step_s;           /* receives the mean step time after the first */
  const char *trace;        /* write a Chrome/Perfetto trace of the last step here (rank 0) */
  double *peak_bytes;       /* receives the bytes the rank held: arena, scratch, staging */
  struct Backend *backend;  /* NULL: the backend named next, opened and closed by the run */
  const char *backend_name; /* "cpu" (NULL) or "cuda" */
  bool serial_comm;         /* communication on the step's thread, none overlapped (runtime/overlap.c) */
  const char *comm_name;    /* "auto" (NULL), "host" or "nccl": the device communication (docs/distributed.md) */
  /* checkpoints (docs/checkpoints.md): after every `checkpoint_every` steps
     and the last, into checkpoint_dir/step-N, keeping the newest `keep` */
  const char *checkpoint_dir;
  int checkpoint_every, checkpoint_keep;
  const char *resume;    /* continue from this checkpoint (or the newest in this folder of them) */
  const char *init_from; /* start from the parameters of this safetensors file or checkpoint */
} RunOptions;

/* Runs the init section, then `steps` steps. Returns 0 or prints an error
 * and returns nonzero. */
int runtime_run(const Program *p, const RunOptions *o);

/* The same, one step at a time, with access to buffers by name (tests,
 * tools). runtime_new checks the program, allocates and runs init. */
typedef struct Runtime Runtime;
Runtime *runtime_new(const Program *p, const RunOptions *o);
int runtime_step(Runtime *rt, double *loss);
/* host address of a buffer (its dtype's elements), NULL if none has the name
   or the arena is not host memory (a GPU backend): use runtime_read there */
void *runtime_buffer(Runtime *rt, const char *name, int64_t *numel);
/* Copies the n elements of buffer `name` into dst as f32, from any backend
   (downloaded; bf16 widened). false, writing nothing, when no buffer has the
   name, it is not f32 or bf16, or it holds other than n elements. Call it
   between steps (a step's end synchronizes the backend). */
bool runtime_read(Runtime *rt, const char *name, float *dst, int64_t n);
/* The other way: the buffer gets src's n values (rounded to nearest even
   where it is bf16), uploaded. The same refusals as runtime_read. */
bool runtime_write(Runtime *rt, const char *name, const float *src, int64_t n);
void runtime_free(Runtime *rt);
bool runtime_save_params(Runtime *rt, const char *path, FILE *err);
/* The newest complete checkpoint's step in folder ck, or -1. */
int checkpoint_newest(const char *ck);
/* A checkpoint folder, or the newest complete one in a folder of them;
   NULL with *why saying what is wrong. */
const char *checkpoint_resolve(const char *path, const char **why);
/* ck/step-NNNNNNNN (arena) */
const char *checkpoint_folder(const char *ck, int step);

/* Bytes of the scratch (the backend's memory) the communication
   instructions of p need at most: gathered parts, all-to-all blocks, and
   flat buffers padded to whole chunks. */
int64_t comm_staging_bytes(const Program *p);

/* Counter-based random numbers: the value at (key, index) never depends on
 * how a tensor is split or in which order elements are produced. */
uint64_t rng_u64(uint64_t key, uint64_t index);
float rng_uniform(uint64_t key, uint64_t index); /* [0, 1) */
float rng_normal(uint64_t key, uint64_t index);

#endif
