/* program.c: program files and `carve explain`.
 *
 * A program file is text, one item per line:
 *
 *   carve-program 4                    format version
 *   carve 0.1.0                        the carve that wrote it
 *   model gpt
 *   rank 0 world 1
 *   plan 5e1b0c2a9d8f7e61              the same in every rank program of one plan
 *   seed 1234
 *   microbatches 1
 *   precision bf16                     fp32, or bf16 mixed precision
 *   tokens_per_step 1024               tokens a step consumes (0: no token input)
 *   vocab 256                          token space of the token inputs
 *   flops_per_step 2.8e+09             einsum FLOPs of one step
 *   arena 21037248                     bytes the rank allocates, once
 *   buffers 270
 *   buf 0 param f32 [256,64] @0 wte of [256,128]
 *                                      id, kind, dtype, local shape, offset, name;
 *                                      param, optstate: the whole tensor's shape
 *   ...
 *   init 40                            instructions run once
 *   init 0 : kind=normal a=0.02 b=0    op, output buffer, ':', inputs, attributes
 *   ...
 *   step 900                           instructions run every step
 *   einsum 17 : 12 3 spec=abc,cd->abd
 *   ...
 *   checksum 9f3a...                   FNV-1a 64 over the 8-byte words (little
 *                                      endian), then the tail bytes, of every
 *                                      byte above this line (hash_words)
 *
 * The reader trusts nothing: every id, shape, offset and attribute is checked,
 * and so is the checksum, so a truncated or edited file is refused with the
 * line that is wrong. */
#include "carve.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const buf_kind_names[] = {"param", "grad", "optstate", "input", "act", "scalar", "work"};

/* The name of attribute k of an op: integer attributes first, then floats. */
static bool attr_name(const char *list, int k, char *out, size_t n) {
  for (const char *p = list; *p;) {
    size_t len = strcspn(p, ",");
    if (k-- == 0) {
      snprintf(out, n, "%.*s", (int)len, p);
      return true;
    }
    p += len + (p[len] == ',');
  }
  return false;
}

static bool kind_attr(OpKind op, int k) { return (op == OP_INIT || op == OP_LOAD) && k == 0; }

/* Text built in place: an instruction line in a small array (for `carve
   explain`), or a program file's text in a chunk that is written out as it
   fills. Items are copied and numbers converted by hand, instead of a
   formatted print per item. */
typedef struct Out {
  char *s;
  size_t n, cap;
} Out;

static void put_str(Out *o, const char *s, size_t len) {
  CARVE_ASSERT(o->n + len <= o->cap, "a program line too long");
  memcpy(o->s + o->n, s, len);
  o->n += len;
}

static void put_cstr(Out *o, const char *s) { put_str(o, s, strlen(s)); }

/* v in decimal */
static void put_num(Out *o, int64_t v) {
  CARVE_ASSERT(o->n + 24 <= o->cap, "a program line too long");
  o->n += (size_t)int_str(v, o->s + o->n);
}

/* sep, then v in decimal */
static void put_int(Out *o, char sep, int64_t v) {
  put_str(o, &sep, 1);
  put_num(o, v);
}

/* "[8,1024,768]" */
static void put_shape(Out *o, const Shape *s) {
  put_str(o, "[", 1);
  for (int i = 0; i < s->rank; i++) {
    if (i) put_str(o, ",", 1);
    put_num(o, s->d[i]);
  }
  put_str(o, "]", 1);
}

/* " name=value" for each attribute of in, in the order op_info lists them. */
static void put_attrs(Out *l, const Instr *in) {
  const OpInfo *oi = &op_info[in->op];
  const char *p = oi->iattrs;
  for (int k = 0; k < MAXIATTR && *p; k++, p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
    put_str(l, " ", 1);
    put_str(l, p, strcspn(p, ","));
    if (kind_attr(in->op, k) && in->i[k] >= 0 && in->i[k] < INIT_COUNT) {
      put_str(l, "=", 1);
      put_cstr(l, init_names[in->i[k]]);
    } else {
      put_int(l, '=', in->i[k]);
    }
  }
  p = oi->fattrs;
  for (int k = 0; k < 5 && *p; k++, p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
    char v[40];
    int n = snprintf(v, sizeof v, "=%.17g", in->f[k]);
    put_str(l, " ", 1);
    put_str(l, p, strcspn(p, ","));
    put_str(l, v, (size_t)n);
  }
  if (in->op == OP_EINSUM) {
    put_str(l, " spec=", 6);
    put_cstr(l, in->spec);
  }
}

/* "op out : in... attrs\n", as a program file has it */
static void put_instr(Out *l, const Instr *in) {
  put_cstr(l, op_info[in->op].name);
  put_int(l, ' ', in->out);
  put_str(l, " :", 2);
  for (int k = 0; k < in->nin; k++) put_int(l, ' ', in->in[k]);
  put_attrs(l, in);
  put_str(l, "\n", 1);
}

void instr_print(const Program *p, const Instr *in, FILE *out, bool names) {
  char s[1024];
  Out l = {s, 0, sizeof s};
  if (!names) {
    put_instr(&l, in);
    fwrite(l.s, 1, l.n, out);
    return;
  }
  fprintf(out, "%-16s %-30s <-", op_info[in->op].name, in->out >= 0 ? p->bufs[in->out].name : "-");
  for (int k = 0; k < in->nin; k++) fprintf(out, " %s", p->bufs[in->in[k]].name);
  put_attrs(&l, in);
  put_str(&l, "\n", 1);
  fwrite(l.s, 1, l.n, out);
}

/* Buffers that are a piece of a whole tensor, which their line names. */
static bool has_whole(BufKind k) { return k == BUF_PARAM || k == BUF_OPTSTATE; }

/* A program file's text on its way out, a chunk at a time: each chunk is
   hashed and written when it fills (big writes of text still in the cache).
   The checksum is hash_words (FNV-1a 64 over 8-byte words, then the tail
   bytes) of the whole text; it runs on across chunks because every write
   but the last is a multiple of 8 bytes. */
enum { CHUNK = 1 << 18, LINE_ROOM = 1024 };

typedef struct Sink {
  Out o;
  FILE *f;
  uint64_t h; /* hash_words state after the bytes written so far */
} Sink;

static void sink_flush(Sink *k, bool all) {
  size_t n = all ? k->o.n : k->o.n & ~(size_t)7;
  k->h = hash_words(k->o.s, n, k->h ^ FNV64_BASIS); /* the seed that starts from state h */
  fwrite(k->o.s, 1, n, k->f);
  memmove(k->o.s, k->o.s + n, k->o.n - n);
  k->o.n -= n;
}

/* The chunk, with room for `need` more bytes. */
static Out *sink_room(Sink *k, size_t need) {
  CARVE_ASSERT(need + 8 <= k->o.cap, "a program line too long");
  if (k->o.n + need > k->o.cap) sink_flush(k, false);
  return &k->o;
}

static void put_header(Sink *k, const Program *p) {
  char s[LINE_ROOM];
  int n =
      snprintf(s, sizeof s,
               "carve-program %d\ncarve %s\nmodel %s\nrank %d world %d\nplan %016" PRIx64 "\nseed %" PRIu64
               "\nmicrobatches %d\nprecision %s\ntokens_per_step %" PRId64 "\nvocab %" PRId64
               "\nflops_per_step %.17g\narena %" PRId64 "\nbuffers %d\n",
               CARVE_PROGRAM_FORMAT, CARVE_VERSION, p->model, p->rank, p->world, p->plan_id, p->seed, p->microbatches,
               precision_name(p->precision), p->tokens_per_step, p->vocab, p->flops_per_step, p->arena_bytes, p->nbufs);
  CARVE_ASSERT(n > 0 && n < (int)sizeof s, "a program header too long");
  put_str(sink_room(k, (size_t)n), s, (size_t)n);
}

/* "buf ID KIND DTYPE SHAPE @OFFSET NAME [of WHOLE]" */
static void put_buf(Sink *k, const Program *p, int b) {
  const Buffer *B = &p->bufs[b];
  size_t name = strlen(B->name);
  Out *o = sink_room(k, name + LINE_ROOM);
  put_str(o, "buf", 3);
  put_int(o, ' ', b);
  put_str(o, " ", 1);
  put_cstr(o, buf_kind_names[B->kind]);
  put_str(o, " ", 1);
  put_cstr(o, dtype_name(B->dtype));
  put_str(o, " ", 1);
  put_shape(o, &B->shape);
  put_str(o, " @", 2);
  put_num(o, B->offset);
  put_str(o, " ", 1);
  put_str(o, B->name, name);
  if (has_whole(B->kind)) {
    put_str(o, " of ", 4);
    put_shape(o, &B->whole);
  }
  put_str(o, "\n", 1);
}

/* "group G : RANK..." (a group may list every rank of the world) */
static void put_group(Sink *k, const Program *p, int g) {
  Out *o = sink_room(k, 64);
  put_str(o, "group", 5);
  put_int(o, ' ', g);
  put_str(o, " :", 2);
  for (int i = 0; i < p->group_size[g]; i++) put_int(sink_room(k, 32), ' ', p->group_ranks[g][i]);
  put_str(sink_room(k, 1), "\n", 1);
}

/* "what N": the count line that opens a section */
static void put_count(Sink *k, const char *what, int n) {
  Out *o = sink_room(k, 64);
  put_cstr(o, what);
  put_int(o, ' ', n);
  put_str(o, "\n", 1);
}

static void print_program(const Program *p, Sink *k) {
  put_header(k, p);
  for (int b = 0; b < p->nbufs; b++) {
    if (b + 16 < p->nbufs) __builtin_prefetch(p->bufs[b + 16].name); /* names lie all over the arena */
    put_buf(k, p, b);
  }
  put_count(k, "groups", p->ngroups);
  for (int g = 0; g < p->ngroups; g++) put_group(k, p, g);
  put_count(k, "init", p->ninit);
  for (int i = 0; i < p->ninit; i++) put_instr(sink_room(k, LINE_ROOM), &p->init[i]);
  put_count(k, "step", p->nstep);
  for (int i = 0; i < p->nstep; i++) put_instr(sink_room(k, LINE_ROOM), &p->step[i]);
  sink_flush(k, true);
}

bool program_write(const Program *p, const char *path, FILE *err) {
  if (!program_verify(p, err)) return false; /* a bug in a code generator: never written */
  /* write to a temporary name, then rename: a reader never sees half a file */
  const char *tmp;
  FILE *f = temp_beside(path, &tmp);
  if (f) {
    setvbuf(f, NULL, _IONBF, 0); /* the sink writes whole chunks */
    Sink k = {.o = {arena_alloc(CHUNK), 0, CHUNK}, .f = f, .h = FNV64_BASIS};
    print_program(p, &k);
    fprintf(f, "checksum %016" PRIx64 "\n", k.h);
  }
  bool ok = temp_close(f, tmp, path, true);
  if (!ok) fprintf(err, "carve: error: cannot write program '%s': %s\n", path, strerror(errno));
  return ok;
}
/* ---------------------------------------------------------------- reading */

typedef struct Reader {
  const char *path;
  char *text;
  char *line; /* current line, NUL-terminated in place */
  char *next;
  int lineno;
  FILE *err;
  int64_t lines_max; /* what the file's size allows: a count beyond it is a lie, not an allocation */
} Reader;

#define LINE_MIN 8 /* bytes of the shortest buffer, group or instruction line */

static bool next_line(Reader *R) {
  if (!R->next || !*R->next) return false;
  R->line = R->next;
  char *nl = strchr(R->line, '\n');
  if (nl) {
    *nl = 0;
    R->next = nl + 1;
  } else {
    R->next = R->line + strlen(R->line);
  }
  R->lineno++;
  return true;
}

static bool bad(Reader *R, const char *what) {
  fprintf(R->err, "carve: error: %s:%d: %s\n", R->path, R->lineno, what);
  return false;
}

/* Reads "key value" header lines. */
static bool header_i64(Reader *R, const char *key, int64_t *v) {
  char k[32];
  long long x;
  int n = 0;
  if (!next_line(R) || sscanf(R->line, "%31s %lld%n", k, &x, &n) != 2 || strcmp(k, key) != 0 || R->line[n])
    return bad(R, arena_printf("expected '%s <integer>'", key));
  *v = x;
  return true;
}

static bool parse_shape(const char *s, Shape *sh) {
  if (*s++ != '[') return false;
  sh->rank = 0;
  int64_t total = 1; /* the element count must not overflow either */
  if (*s == ']') return s[1] == 0;
  for (;;) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno || v < 1 || v > (1ll << 48) || sh->rank == MAXRANK) return false;
    if (__builtin_mul_overflow(total, v, &total) || total > (1ll << 48)) return false;
    sh->d[sh->rank++] = v;
    if (*end == ']') return end[1] == 0;
    if (*end != ',') return false;
    s = end + 1;
  }
}

static bool read_buffer(Reader *R, Program *p, int b) {
  char kind[16], dt[8], shape[256], name[512], whole[256] = "";
  int id, n = 0, m = 0;
  long long off;
  if (!next_line(R) ||
      sscanf(R->line, "buf %d %15s %7s %255s @%lld %511s%n", &id, kind, dt, shape, &off, name, &n) != 6 || id != b ||
      (R->line[n] && (sscanf(R->line + n, " of %255s%n", whole, &m) != 1 || R->line[n + m])))
    return bad(R, arena_printf("expected 'buf %d <kind> <dtype> <shape> @<offset> <name> [of <shape>]'", b));
  Buffer *B = &p->bufs[b];
  int k = 0;
  while (k < BUF_KINDS && strcmp(buf_kind_names[k], kind) != 0) k++;
  if (k == BUF_KINDS) return bad(R, "unknown buffer kind");
  B->kind = (BufKind)k;
  if (strcmp(dt, "f32") && strcmp(dt, "i32") && strcmp(dt, "bf16")) return bad(R, "unknown dtype");
  B->dtype = strcmp(dt, "i32") == 0 ? DT_I32 : strcmp(dt, "bf16") == 0 ? DT_BF16 : DT_F32;
  if (!parse_shape(shape, &B->shape)) return bad(R, "malformed shape");
  if (has_whole(B->kind) != (whole[0] != 0))
    return bad(R, has_whole(B->kind) ? "a param or optstate buffer names its whole tensor's shape ('of [...]')"
                                     : "only param and optstate buffers name a whole tensor");
  if (whole[0] && !parse_shape(whole, &B->whole)) return bad(R, "malformed whole-tensor shape");
  B->bytes = shape_numel(&B->shape) * dtype_size(B->dtype);
  if (off < 0 || off > p->arena_bytes || B->bytes > p->arena_bytes - off)
    return bad(R, "buffer lies outside the arena");
  if (off % dtype_size(B->dtype)) return bad(R, "buffer offset is not a multiple of its element size");
  if (B->kind == BUF_WORK && B->dtype != DT_BF16) return bad(R, "a work buffer (a parameter's working copy) is bf16");
  B->offset = off;
  B->name = arena_strdup(name);
  return true;
}

/* The runtime allocates the arena whole: one much larger than its buffers
   reach is refused (a small file must not claim terabytes). */
static bool arena_fits(const Program *p) {
  int64_t end = 0;
  for (int b = 0; b < p->nbufs; b++)
    if (p->bufs[b].offset + p->bufs[b].bytes > end) end = p->bufs[b].offset + p->bufs[b].bytes;
  return p->arena_bytes <= 4 * end + (16 << 20);
}

/* An integer in [lo, hi], or -1. */
static int parse_id_range(const char *tok, int lo, int hi) {
  char *end;
  errno = 0;
  long v = strtol(tok, &end, 10);
  return end == tok || *end || errno || v < lo || v > hi ? -1 : (int)v;
}

/* "group ID : r0 r1 ...": world ranks, ascending, at least one */
static bool read_group(Reader *R, Program *p, int g) {
  char *save = NULL;
  if (!next_line(R)) return bad(R, "the file ends inside the group list");
  char *tok = strtok_r(R->line, " ", &save);
  char *id = strtok_r(NULL, " ", &save), *colon = strtok_r(NULL, " ", &save);
  if (!tok || strcmp(tok, "group") || !id || parse_id_range(id, 0, p->ngroups - 1) != g || !colon || strcmp(colon, ":"))
    return bad(R, arena_printf("expected 'group %d : <ranks>'", g));
  size_t most = strlen(save ? save : "") / 2 + 1; /* ranks the rest of the line can hold */
  p->group_ranks[g] = arena_alloc(sizeof(int) * (most < (size_t)p->world ? most : (size_t)p->world));
  int n = 0;
  while ((tok = strtok_r(NULL, " ", &save))) {
    int r = parse_id_range(tok, 0, p->world - 1);
    if (r < 0) return bad(R, arena_printf("group %d: '%s' is not a rank of a world of %d", g, tok, p->world));
    if (n && r <= p->group_ranks[g][n - 1]) return bad(R, arena_printf("group %d: ranks must ascend", g));
    p->group_ranks[g][n++] = r;
  }
  if (n == 0) return bad(R, arena_printf("group %d has no ranks", g));
  p->group_size[g] = n;
  return true;
}

static bool parse_attr(Reader *R, Instr *in, const char *tok) {
  const char *eq = strchr(tok, '=');
  if (!eq) return bad(R, arena_printf("expected key=value, got '%s'", tok));
  const OpInfo *oi = &op_info[in->op];
  char name[32];
  size_t klen = (size_t)(eq - tok);
  const char *val = eq + 1;
  char *end;
  if (in->op == OP_EINSUM && klen == 4 && strncmp(tok, "spec", 4) == 0) {
    if (strlen(val) >= sizeof in->spec) return bad(R, "einsum spec too long");
    strcpy(in->spec, val);
    return true;
  }
  for (int k = 0; k < MAXIATTR && attr_name(oi->iattrs, k, name, sizeof name); k++) {
    if (strlen(name) != klen || strncmp(name, tok, klen) != 0) continue;
    if (kind_attr(in->op, k)) {
      int lo = in->op == OP_INIT ? INIT_ZEROS : SRC_TOKENS, hi = in->op == OP_INIT ? INIT_UNIFORM : SRC_UNIFORM;
      for (int v = lo; v <= hi; v++)
        if (strcmp(init_names[v], val) == 0) {
          in->i[k] = v;
          return true;
        }
      return bad(R, arena_printf("unknown kind '%s'", val));
    }
    errno = 0;
    in->i[k] = strtoll(val, &end, 10);
    if (end == val || *end || errno) return bad(R, arena_printf("attribute %s needs an integer", name));
    return true;
  }
  for (int k = 0; k < 5 && attr_name(oi->fattrs, k, name, sizeof name); k++) {
    if (strlen(name) != klen || strncmp(name, tok, klen) != 0) continue;
    in->f[k] = strtod(val, &end);
    if (end == val || *end) return bad(R, arena_printf("attribute %s needs a number", name));
    return true;
  }
  return bad(R, arena_printf("%s has no attribute '%.*s'", oi->name, (int)klen, tok));
}

static int parse_id(const char *tok, int nbufs) {
  char *end;
  long v = strtol(tok, &end, 10);
  if (end == tok || *end || v < -1 || v >= nbufs) return -2;
  return (int)v;
}

static bool read_instr(Reader *R, const Program *p, Instr *in) {
  if (!next_line(R)) return bad(R, "the file ends inside the instruction list");
  char *save = NULL;
  char *tok = strtok_r(R->line, " ", &save);
  int op = tok ? op_lookup(tok) : -1;
  if (op < 0 || !(op_info[op].flags & OPF_PROG))
    return bad(R, arena_printf("unknown instruction '%s'", tok ? tok : ""));
  memset(in, 0, sizeof *in);
  in->op = (OpKind)op;
  tok = strtok_r(NULL, " ", &save);
  if (!tok || (in->out = parse_id(tok, p->nbufs)) < -1) return bad(R, "bad output buffer id");
  tok = strtok_r(NULL, " ", &save);
  if (!tok || strcmp(tok, ":") != 0) return bad(R, "expected ':' after the output buffer");
  while ((tok = strtok_r(NULL, " ", &save))) {
    if (strchr(tok, '=')) {
      if (!parse_attr(R, in, tok)) return false;
      continue;
    }
    if (in->nin == MAXIN) return bad(R, "too many inputs");
    int id = parse_id(tok, p->nbufs);
    if (id < 0) return bad(R, arena_printf("bad input buffer id '%s'", tok));
    in->in[in->nin++] = id;
  }
  int want = op_info[op].nin;
  if ((want >= 0 && in->nin != want) || (want < 0 && (in->nin < 1 || in->nin > 2)))
    return bad(R, arena_printf("%s takes %d inputs, got %d", op_info[op].name, want, in->nin));
  bool needs_out = op != OP_LOSS && op != OP_SEND;
  if (needs_out && in->out < 0) return bad(R, arena_printf("%s needs an output buffer", op_info[op].name));
  return true;
}

static bool read_section(Reader *R, Program *p, const char *name, Instr **out, int *n) {
  int64_t count;
  if (!header_i64(R, name, &count)) return false;
  if (count < 0 || count > R->lines_max) return bad(R, "more instructions than the file has lines");
  *n = (int)count;
  *out = arena_alloc(sizeof(Instr) * (size_t)(count + 1));
  for (int i = 0; i < *n; i++)
    if (!read_instr(R, p, &(*out)[i])) return false;
  return true;
}

Program *program_read(const char *path, FILE *err) {
  size_t len;
  Reader R = {.path = path, .err = err};
  char why[256];
  R.text = read_file_limit(path, LIMIT_PROGRAM, &len, why, sizeof why);
  if (!R.text) {
    fprintf(err, "carve: error: cannot read program '%s': %s\n", path, why);
    return NULL;
  }
  R.lines_max = (int64_t)(len / LINE_MIN);
  Program *p = arena_alloc(sizeof(Program));
  Program *result = NULL;
  /* checksum first: the last line covers everything before it */
  char *last = len ? R.text + len - 1 : R.text;
  if (len && *last == '\n') last--;
  while (last > R.text && last[-1] != '\n') last--;
  uint64_t want;
  char tail[32] = "";
  if (strlen(R.text) != len) {
    fprintf(err, "carve: error: %s: not a carve program (it contains NUL bytes)\n", path);
  } else if (sscanf(last, "checksum %" SCNx64 "%31s", &want, tail) != 1) {
    fprintf(err, "carve: error: %s: no checksum line at the end: the file is truncated or not a carve program\n", path);
  } else if (hash_words(R.text, (size_t)(last - R.text), 0) != want) {
    fprintf(err, "carve: error: %s: checksum mismatch: the file was modified or corrupted after it was written\n",
            path);
  } else {
    *last = 0;
    R.next = R.text;
    int64_t v, world, rank;
    int plan_end = 0;
    char model[256], ver[64];
    if (!next_line(&R) || sscanf(R.line, "carve-program %" SCNd64, &v) != 1) {
      bad(&R, "not a carve program (expected 'carve-program <version>')");
    } else if (v != CARVE_PROGRAM_FORMAT) {
      bad(&R, arena_printf("program format %lld, but this carve reads format %d: recompile the plan", (long long)v,
                           CARVE_PROGRAM_FORMAT));
    } else if (!next_line(&R) || sscanf(R.line, "carve %63s", ver) != 1) {
      bad(&R, "expected 'carve <version>'");
    } else if (strcmp(ver, CARVE_VERSION) != 0) {
      bad(&R, arena_printf("written by carve %s, but this is carve %s: recompile the plan", ver, CARVE_VERSION));
    } else if (!next_line(&R) || sscanf(R.line, "model %255s", model) != 1) {
      bad(&R, "expected 'model <name>'");
    } else if (!next_line(&R) || sscanf(R.line, "rank %" SCNd64 " world %" SCNd64, &rank, &world) != 2 || world < 1 ||
               world > (1 << 20) || rank < 0 || rank >= world) {
      bad(&R, "expected 'rank <r> world <n>' with 0 <= r < n");
    } else if (!next_line(&R) || strncmp(R.line, "plan ", 5) || strlen(R.line) != 21 ||
               strspn(R.line + 5, "0123456789abcdef") != 16 ||
               sscanf(R.line, "plan %" SCNx64 "%n", &p->plan_id, &plan_end) != 1 || R.line[plan_end]) {
      bad(&R, "expected 'plan <id>' (16 hex digits)");
    } else {
      int64_t seed, mb, tps, vocab, arena, nbufs;
      double flops;
      p->model = arena_strdup(model);
      p->rank = (int)rank;
      p->world = (int)world;
      char prec[16];
      bool ok = header_i64(&R, "seed", &seed) && header_i64(&R, "microbatches", &mb);
      if (ok &&
          (!next_line(&R) || sscanf(R.line, "precision %15s", prec) != 1 || !precision_parse(prec, &p->precision)))
        ok = bad(&R, "expected 'precision fp32' or 'precision bf16'");
      ok = ok && header_i64(&R, "tokens_per_step", &tps) && header_i64(&R, "vocab", &vocab);
      if (ok && (!next_line(&R) || sscanf(R.line, "flops_per_step %lf", &flops) != 1))
        ok = bad(&R, "expected 'flops_per_step <number>'");
      ok = ok && header_i64(&R, "arena", &arena) && header_i64(&R, "buffers", &nbufs);
      if (ok && (mb < 1 || tps < 0 || vocab < 0 || vocab > 65536 || arena < 0 || nbufs < 0 || nbufs > R.lines_max))
        ok = bad(&R, "header value out of range");
      if (ok) {
        p->seed = (uint64_t)seed, p->microbatches = (int)mb, p->tokens_per_step = tps, p->vocab = vocab;
        p->flops_per_step = flops, p->arena_bytes = arena, p->nbufs = (int)nbufs;
        p->bufs = arena_alloc(sizeof(Buffer) * (size_t)(nbufs + 1));
        for (int b = 0; ok && b < p->nbufs; b++) ok = read_buffer(&R, p, b);
        int64_t ngroups = 0;
        ok = ok && header_i64(&R, "groups", &ngroups);
        if (ok && (ngroups < 0 || ngroups > R.lines_max)) ok = bad(&R, "more groups than the file has lines");
        if (ok && !arena_fits(p)) ok = bad(&R, "the arena is far larger than its buffers need");
        if (ok) {
          p->ngroups = (int)ngroups;
          p->group_size = arena_alloc(sizeof(int) * (size_t)(ngroups + 1));
          p->group_ranks = arena_alloc(sizeof(int *) * (size_t)(ngroups + 1));
        }
        for (int g = 0; ok && g < p->ngroups; g++) ok = read_group(&R, p, g);
        ok = ok && read_section(&R, p, "init", &p->init, &p->ninit) && read_section(&R, p, "step", &p->step, &p->nstep);
        if (ok && next_line(&R)) ok = bad(&R, "unexpected text after the step section");
      }
      if (ok) result = p;
    }
  }
  free(R.text);
  return result;
}

/* The step's communication, summed the way plan.json lists a stage's
   collectives (docs/cost-model.md, "What is counted"): by kind, the size of
   the group, and the bytes one runs on (the larger of what goes in and
   what comes out, so the whole tensor of a gather or a reduce-scatter),
   with how many times a step runs it. A shard or a cut moves nothing and is
   not listed, nor is a collective of a group of one; a send or receive is
   between two ranks. Sorted by kind, group size and bytes. */
typedef struct {
  const char *kind;
  int ranks;
  int64_t bytes, count;
} CommRow;

static int row_order(const void *a, const void *b) {
  const CommRow *x = a, *y = b;
  int c = strcmp(x->kind, y->kind);
  if (c) return c;
  if (x->ranks != y->ranks) return x->ranks < y->ranks ? -1 : 1;
  return x->bytes < y->bytes ? -1 : x->bytes > y->bytes;
}

static void explain_comms(const Program *p, FILE *out) {
  CommRow *rows = xcalloc((size_t)p->nstep + 1, sizeof(CommRow));
  int n = 0;
  for (int i = 0; i < p->nstep; i++) {
    const Instr *in = &p->step[i];
    const char *kind = in->op == OP_ALL_REDUCE                                          ? "all-reduce"
                       : in->op == OP_ALL_GATHER || in->op == OP_GATHER_DIM             ? "all-gather"
                       : in->op == OP_REDUCE_SCATTER || in->op == OP_REDUCE_SCATTER_DIM ? "reduce-scatter"
                       : in->op == OP_ALL_TO_ALL_DIM                                    ? "all-to-all"
                       : in->op == OP_SEND                                              ? "send"
                       : in->op == OP_RECV                                              ? "recv"
                                                                                        : NULL;
    if (!kind) continue;
    bool p2p = in->op == OP_SEND || in->op == OP_RECV;
    int ranks = p2p ? 2 : in->i[0] >= 0 && in->i[0] < p->ngroups ? p->group_size[in->i[0]] : 0;
    if (ranks < 2) continue;
    int64_t bytes = in->out >= 0 ? p->bufs[in->out].bytes : 0;
    if (in->nin > 0 && in->in[0] >= 0 && p->bufs[in->in[0]].bytes > bytes) bytes = p->bufs[in->in[0]].bytes;
    int r = 0;
    while (r < n && !(rows[r].kind == kind && rows[r].ranks == ranks && rows[r].bytes == bytes)) r++;
    if (r == n) rows[n++] = (CommRow){kind, ranks, bytes, 0};
    rows[r].count++;
  }
  qsort(rows, (size_t)n, sizeof(CommRow), row_order);
  fprintf(out, "\ncommunication per step (%d kind%s of collective)\n", n, n == 1 ? "" : "s");
  for (int r = 0; r < n; r++)
    fprintf(out, "  %-14s ranks %-4d bytes %-12lld count %lld\n", rows[r].kind, rows[r].ranks, (long long)rows[r].bytes,
            (long long)rows[r].count);
  free(rows);
}

/* Does persistent buffer b span others (a gradient bucket over its
   members), whose bytes it would count again? */
static bool spans_others(const Program *p, int b) {
  const Buffer *B = &p->bufs[b];
  if (B->kind == BUF_ACT || B->kind == BUF_INPUT) return false;
  for (int i = 0; i < p->nbufs; i++) {
    const Buffer *I = &p->bufs[i];
    if (i != b && I->kind == B->kind && I->bytes > 0 && I->bytes < B->bytes && I->offset >= B->offset &&
        I->offset + I->bytes <= B->offset + B->bytes)
      return true;
  }
  return false;
}

void program_explain(const Program *p, FILE *out) {
  char a[32], b[32];
  fprintf(out, "program for model %s, rank %d of %d (format %d), plan %016" PRIx64 "\n", p->model, p->rank, p->world,
          CARVE_PROGRAM_FORMAT, p->plan_id);
  fprintf(out, "  arena %s in one allocation; %d buffers\n", fmt_bytes((double)p->arena_bytes, a, sizeof a), p->nbufs);
  fprintf(out, "  %d microbatch%s, %s, %lld tokens and %s einsum FLOPs per step\n", p->microbatches,
          p->microbatches == 1 ? "" : "es", precision_describe(p->precision, false), (long long)p->tokens_per_step,
          fmt_si(p->flops_per_step, b, sizeof b));
  int64_t by_kind[BUF_KINDS] = {0};
  for (int i = 0; i < p->nbufs; i++)
    if (!spans_others(p, i)) by_kind[p->bufs[i].kind] += p->bufs[i].bytes;
  fprintf(out, "  bytes by kind:");
  for (int k = 0; k < BUF_KINDS; k++)
    fprintf(out, " %s %s", buf_kind_names[k], fmt_bytes((double)by_kind[k], a, sizeof a));
  fprintf(out, "\n\nbuffers\n");
  for (int i = 0; i < p->nbufs; i++) {
    const Buffer *B = &p->bufs[i];
    fprintf(out, "  %4d %-8s %s%-18s @%-12lld %s", i, buf_kind_names[B->kind], dtype_name(B->dtype),
            shape_str(&B->shape), (long long)B->offset, B->name);
    fprintf(out, has_whole(B->kind) ? "  (of %s)\n" : "\n", shape_str(&B->whole));
  }
  if (p->ngroups) fprintf(out, "\ngroups (world ranks)\n");
  for (int g = 0; g < p->ngroups; g++) {
    fprintf(out, "  %4d :", g);
    for (int k = 0; k < p->group_size[g]; k++) fprintf(out, " %d", p->group_ranks[g][k]);
    fputc('\n', out);
  }
  fprintf(out, "\ninit (%d instructions, run once)\n", p->ninit);
  for (int i = 0; i < p->ninit; i++) {
    fprintf(out, "  %4d ", i);
    instr_print(p, &p->init[i], out, true);
  }
  fprintf(out, "\nstep (%d instructions, run every step)\n", p->nstep);
  for (int i = 0; i < p->nstep; i++) {
    fprintf(out, "  %4d ", i);
    instr_print(p, &p->step[i], out, true);
  }
  explain_comms(p, out);
}
