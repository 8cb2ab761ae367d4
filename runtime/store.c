/* store.c: reading whole tensors back from the pieces that files hold. A
 * store is a checkpoint folder (its manifest lists every rank's pieces of
 * every parameter and optimizer state tensor in the ranks' shard files) or
 * a safetensors file (one piece per tensor: the whole of it). store_fill
 * gives a rank the piece of a tensor its own program holds, whatever plan
 * wrote the pieces: a piece of the same geometry is read directly, anything
 * else is assembled from the pieces that cover it (resharding).
 *
 * Nothing in these files is trusted: every count, shape, offset and piece is
 * checked against the file sizes before anything is allocated or read, and
 * every checkpoint piece against its hash when it is read. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kmath.h"
#include "store.h"

#define ELEMS_MAX (1ll << 48)

enum { SD_F32, SD_BF16, SD_F16 };
static const int sd_size[] = {4, 2, 2};

typedef struct StorePiece {
  const char *tensor;
  BufKind kind;
  Shape shape; /* the whole tensor's */
  int file, dtype;
  int64_t at, numel; /* bytes into the file; elements */
  Piece g;
  uint64_t hash;
  bool hashed;
  const char *bad; /* why this tensor cannot be read (a safetensors entry carve does not take), or NULL */
} StorePiece;

static bool fail(FILE *err, const char *path, const char *what) {
  fprintf(err, "carve: error: %s: %s\n", path, what);
  return false;
}

/* Opens a regular file for reading (never a device, a FIFO or a folder); its size in *size. */
static int open_regular(const char *path, int64_t *size, FILE *err) {
  char why[256];
  size_t n;
  int fd = open_input(path, (size_t)1 << 50, &n, why, sizeof why);
  if (fd < 0) fprintf(err, "carve: error: cannot read '%s': %s\n", path, why);
  *size = (int64_t)n;
  return fd;
}

static bool read_at(int fd, void *dst, int64_t bytes, int64_t at) {
  char *p = dst;
  while (bytes > 0) {
    ssize_t got = pread(fd, p, (size_t)(bytes < (1 << 30) ? bytes : (1 << 30)), at);
    if (got <= 0) return false;
    p += got, at += got, bytes -= got;
  }
  return true;
}

/* A JSON number that is a whole number in [lo, hi]. */
static bool json_int(const Json *v, int64_t lo, int64_t hi, int64_t *out) {
  if (!v || v->kind != JSON_NUMBER || !isfinite(v->num) || v->num != floor(v->num) || v->num < (double)lo ||
      v->num > (double)hi)
    return false;
  *out = (int64_t)v->num;
  return true;
}

static bool json_shape(const Json *v, Shape *s) {
  if (!v || v->kind != JSON_ARRAY || v->n > MAXRANK) return false;
  int64_t total = 1;
  s->rank = v->n;
  for (int k = 0; k < v->n; k++) {
    if (!json_int(v->items[k], 1, ELEMS_MAX, &s->d[k]) || __builtin_mul_overflow(total, s->d[k], &total) ||
        total > ELEMS_MAX)
      return false;
  }
  return true;
}

static int by_tensor(const void *a, const void *b) {
  const StorePiece *x = a, *y = b;
  int c = strcmp(x->tensor, y->tensor);
  return c ? c : (x->file != y->file ? x->file - y->file : (x->at > y->at) - (x->at < y->at));
}

/* Sorts the pieces by tensor and checks that all pieces of one tensor
   agree on its shape and kind (a safetensors file: one piece per tensor). */
static bool index_pieces(TensorStore *s, FILE *err) {
  qsort(s->pieces, (size_t)s->npieces, sizeof(StorePiece), by_tensor);
  for (int i = 1; i < s->npieces; i++) {
    const StorePiece *a = &s->pieces[i - 1], *b = &s->pieces[i];
    if (strcmp(a->tensor, b->tensor) != 0) continue;
    if (!s->checkpoint) return fail(err, s->path, arena_printf("tensor '%s' is listed twice", a->tensor));
    if (!shape_eq(&a->shape, &b->shape) || a->kind != b->kind)
      return fail(err, s->path, arena_printf("the pieces of tensor '%s' disagree on its shape or kind", a->tensor));
  }
  return true;
}

/* ------------------------------------------------------------ checkpoints */

static bool read_piece_entry(TensorStore *s, const Json *e, int file, int64_t fsize, StorePiece *p, FILE *err) {
  const char *kind = json_str(e, "kind", ""), *hash = json_str(e, "hash", "");
  char *end;
  p->tensor = json_str(e, "tensor", NULL);
  p->file = file;
  p->dtype = SD_F32;
  p->kind = !strcmp(kind, "param") ? BUF_PARAM : BUF_OPTSTATE;
  p->hash = strtoull(hash, &end, 16);
  p->hashed = true;
  int64_t v[7];
  const char *keys[7] = {"numel", "at", "offset", "axis", "parts", "part", "len"};
  bool ok = p->tensor && strlen(p->tensor) < 512 && (!strcmp(kind, "param") || !strcmp(kind, "optstate")) &&
            strlen(hash) == 16 && !*end && json_shape(json_get(e, "shape"), &p->shape) &&
            json_int(json_get(e, "inner"), 0, ELEMS_MAX, &p->g.inner);
  for (int k = 0; ok && k < 7; k++) ok = json_int(json_get(e, keys[k]), 0, ELEMS_MAX, &v[k]);
  if (!ok) return fail(err, s->path, "a piece without its tensor, kind, shape, place or hash");
  p->numel = v[0], p->at = v[1];
  p->g = (Piece){v[2], v[3], v[4] > 1 ? v[4] : 1, v[5], v[6], p->g.inner};
  const char *why = piece_check(&p->g, &p->shape, p->numel);
  if (!why && p->at + 4 * p->numel > fsize) why = "a piece that lies past the end of its shard file";
  return why ? fail(err, s->path, arena_printf("tensor '%s': %s", p->tensor, why)) : true;
}

/* One rank's entry: its shard file (which must be "rankR.shard") and pieces. */
static bool read_rank(TensorStore *s, const Json *r, int rank, PtrVec *pieces, FILE *err) {
  const char *file = json_str(r, "file", "");
  const Json *list = json_get(r, "pieces");
  if (strcmp(file, arena_printf("rank%d.shard", rank)) != 0 || !list || list->kind != JSON_ARRAY)
    return fail(err, s->path, arena_printf("rank %d: expected its file rank%d.shard and its pieces", rank, rank));
  int64_t size;
  s->files[rank] = arena_printf("%s/%s", s->dir, file);
  int fd = open_regular(s->files[rank], &size, err); /* its size now; opened again when it is read */
  if (fd < 0) return false;
  close(fd);
  for (int i = 0; i < list->n; i++) {
    StorePiece *p = arena_alloc(sizeof(StorePiece));
    if (!read_piece_entry(s, list->items[i], rank, size, p, err)) return false;
    ptrvec_push(pieces, p);
  }
  return true;
}

static char *read_small(const char *path, FILE *err) {
  char why[256];
  size_t len;
  char *text = read_file_limit(path, LIMIT_MANIFEST, &len, why, sizeof why);
  if (!text) fprintf(err, "carve: error: cannot read '%s': %s\n", path, why);
  return text;
}

static bool read_header(TensorStore *s, const Json *m, FILE *err) {
  int64_t version, step, world, seed;
  const char *plan = json_str(m, "plan", ""), *prec = json_str(m, "precision", "");
  char *end;
  if (strcmp(json_str(m, "format", ""), "carve-checkpoint") != 0 ||
      !json_int(json_get(m, "version"), 0, 1 << 20, &version))
    return fail(err, s->path, "not a carve checkpoint manifest");
  if (version != CARVE_CHECKPOINT_FORMAT)
    return fail(err, s->path,
                arena_printf("checkpoint format %lld, but this carve reads format %d", (long long)version,
                             CARVE_CHECKPOINT_FORMAT));
  s->plan = strtoull(plan, &end, 16);
  if (!json_int(json_get(m, "step"), 0, 1 << 30, &step) || !json_int(json_get(m, "world"), 1, 1 << 20, &world) ||
      !json_int(json_get(m, "seed"), 0, (int64_t)1 << 53, &seed) || strlen(plan) != 16 || *end ||
      !precision_parse(prec, &s->precision))
    return fail(err, s->path, "a manifest needs its step, world, seed, plan and precision");
  s->step = (int)step, s->world = (int)world, s->seed = (uint64_t)seed;
  s->model = json_str(m, "model", "?");
  return true;
}

static bool open_checkpoint(TensorStore *s, FILE *err) {
  s->path = arena_printf("%s/manifest.json", s->dir);
  char *text = read_small(s->path, err);
  if (!text) return false;
  size_t at = 0;
  const Json *m = json_parse(text, &at), *ranks = m ? json_get(m, "ranks") : NULL;
  free(text);
  if (!m) return fail(err, s->path, arena_printf("malformed JSON at byte %zu", at));
  if (!read_header(s, m, err)) return false;
  if (!ranks || ranks->kind != JSON_ARRAY || ranks->n != s->world)
    return fail(err, s->path, "a manifest lists every rank's shard");
  s->nfiles = s->world;
  s->fds = arena_alloc(sizeof(int) * (size_t)s->nfiles);
  s->files = arena_alloc(sizeof(char *) * (size_t)s->nfiles);
  for (int r = 0; r < s->nfiles; r++) s->fds[r] = -1;
  PtrVec pieces = {0};
  for (int r = 0; r < s->world; r++)
    if (!read_rank(s, ranks->items[r], r, &pieces, err)) return false;
  s->npieces = pieces.n;
  s->pieces = arena_alloc(sizeof(StorePiece) * (size_t)(pieces.n + 1));
  for (int i = 0; i < pieces.n; i++) s->pieces[i] = *(StorePiece *)pieces.v[i];
  return index_pieces(s, err);
}

/* ------------------------------------------------------------ safetensors */

/* What a file says, fit to print: control bytes and quotes become '?'. */
static const char *printable(const char *text) {
  char *out = arena_strndup(text, strlen(text) < 64 ? strlen(text) : 64);
  for (char *c = out; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == '\'') *c = '?';
  return out;
}

/* One tensor of a safetensors header; NULL, or why carve cannot read it
   (kept with the piece: only a tensor the model needs must be readable). */
static const char *read_st_entry(const char *name, const Json *e, int64_t data, int64_t data_bytes, StorePiece *p) {
  const char *dt = e->kind == JSON_OBJECT ? json_str(e, "dtype", "") : "";
  const Json *offs = e->kind == JSON_OBJECT ? json_get(e, "data_offsets") : NULL;
  int64_t b, end;
  p->tensor = name;
  p->kind = BUF_PARAM;
  p->g = (Piece){.parts = 1};
  p->dtype = !strcmp(dt, "F32") ? SD_F32 : !strcmp(dt, "BF16") ? SD_BF16 : !strcmp(dt, "F16") ? SD_F16 : -1;
  if (p->dtype < 0) return arena_printf("its dtype is '%s'; carve reads F32, BF16 and F16", printable(dt));
  if (!json_shape(e->kind == JSON_OBJECT ? json_get(e, "shape") : NULL, &p->shape) || !offs ||
      offs->kind != JSON_ARRAY || offs->n != 2 || !json_int(offs->items[0], 0, data_bytes, &b) ||
      !json_int(offs->items[1], b, data_bytes, &end))
    return "it needs a shape of positive dims and data offsets inside the file";
  p->numel = shape_numel(&p->shape);
  if (end - b != p->numel * sd_size[p->dtype])
    return arena_printf("its data offsets hold %lld bytes, its shape %lld", (long long)(end - b),
                        (long long)(p->numel * sd_size[p->dtype]));
  p->at = data + b;
  return NULL;
}

static bool open_safetensors(TensorStore *s, FILE *err) {
  int64_t size;
  uint64_t hlen = 0;
  s->nfiles = 1;
  s->fds = arena_alloc(sizeof(int));
  s->files = arena_alloc(sizeof(char *));
  s->files[0] = s->path;
  s->fds[0] = open_regular(s->path, &size, err);
  if (s->fds[0] < 0) return false;
  if (size < 8 || !read_at(s->fds[0], &hlen, 8, 0) || hlen < 2 || hlen > (uint64_t)(size - 8) || hlen > LIMIT_MANIFEST)
    return fail(err, s->path, "not a safetensors file (its header length does not fit the file)");
  char *text = xmalloc(hlen + 1);
  bool ok = read_at(s->fds[0], text, (int64_t)hlen, 8);
  text[ok ? hlen : 0] = 0;
  size_t at = 0;
  const Json *h = ok && text[0] == '{' && strlen(text) == hlen ? json_parse(text, &at) : NULL;
  free(text);
  if (!h || h->kind != JSON_OBJECT)
    return fail(err, s->path, "not a safetensors file (its header is not a JSON object)");
  s->pieces = arena_alloc(sizeof(StorePiece) * (size_t)(h->n + 1));
  for (int i = 0; i < h->n; i++) {
    if (!strcmp(h->keys[i], "__metadata__")) continue;
    StorePiece *p = &s->pieces[s->npieces++];
    p->bad = read_st_entry(h->keys[i], h->items[i], 8 + (int64_t)hlen, size - 8 - (int64_t)hlen, p);
  }
  return index_pieces(s, err);
}

/* ------------------------------------------------------------ the store */

TensorStore *store_open(const char *path, FILE *err) {
  TensorStore *s = arena_alloc(sizeof(TensorStore));
  struct stat st;
  s->dir = s->path = path;
  s->checkpoint = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
  if (s->checkpoint ? open_checkpoint(s, err) : open_safetensors(s, err)) return s;
  store_close(s);
  return NULL;
}

void store_close(TensorStore *s) {
  for (int i = 0; s && i < s->nfiles; i++)
    if (s->fds[i] >= 0) close(s->fds[i]);
  if (s) s->nfiles = 0;
}

/* The first piece of tensor `name`, or -1; its pieces follow it. */
static int find(const TensorStore *s, const char *name) {
  int lo = 0, hi = s->npieces;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (strcmp(s->pieces[mid].tensor, name) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < s->npieces && !strcmp(s->pieces[lo].tensor, name) ? lo : -1;
}

/* IEEE half to float. */
static float half_f32(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
  return h & 0x8000 ? -v : v;
}

/* Reads piece p as f32 into dst, checking its hash. */
static bool read_piece(const TensorStore *s, const StorePiece *p, float *dst, FILE *err) {
  int64_t bytes = p->numel * sd_size[p->dtype];
  void *raw = p->dtype == SD_F32 ? (void *)dst : xmalloc((size_t)bytes + 1);
  int64_t size;
  int fd = s->fds[p->file] >= 0 ? s->fds[p->file] : open_regular(s->files[p->file], &size, err);
  bool ok = fd >= 0 && read_at(fd, raw, bytes, p->at);
  if (fd >= 0 && fd != s->fds[p->file]) close(fd);
  if (fd < 0) {
    if (raw != dst) free(raw);
    return false;
  }
  if (ok && p->hashed && hash_words(raw, (size_t)bytes, 0) != p->hash) {
    fprintf(err,
            "carve: error: %s: the data of tensor '%s' in rank%d.shard does not match its hash: the file is damaged\n",
            s->path, p->tensor, p->file);
    ok = false;
  } else if (!ok) {
    fprintf(err, "carve: error: %s: cannot read tensor '%s': the file is shorter than it says\n", s->path, p->tensor);
  }
  const uint16_t *h = raw;
  for (int64_t i = 0; ok && p->dtype != SD_F32 && i < p->numel; i++)
    dst[i] = p->dtype == SD_BF16 ? km_f32(h[i]) : half_f32(h[i]);
  if (raw != dst) free(raw);
  return ok;
}

static bool same_piece(const StorePiece *p, const Piece *g, int64_t n) {
  return p->numel == n && p->g.offset == g->offset && p->g.parts == g->parts &&
         (g->parts == 1 ||
          (p->g.axis == g->axis && p->g.part == g->part && p->g.len == g->len && p->g.inner == g->inner));
}

/* Reads the pieces of tensor t (first piece `first`) until they cover the
   whole tensor, into whole (f32) and covered (one flag per element). */
static bool assemble(const TensorStore *s, int first, float *whole, uint8_t *covered, FILE *err) {
  const StorePiece *t = &s->pieces[first];
  int64_t n = shape_numel(&t->shape), left = n;
  for (int i = first; i < s->npieces && left > 0 && !strcmp(s->pieces[i].tensor, t->tensor); i++) {
    const StorePiece *p = &s->pieces[i];
    float *v = xmalloc(sizeof(float) * (size_t)(p->numel + 1));
    if (!read_piece(s, p, v, err)) return free(v), false;
    for (int64_t e = 0; e < p->numel; e++) {
      int64_t w = piece_index(&p->g, e);
      if (w < 0 || w >= n || covered[w]) continue;
      whole[w] = v[e], covered[w] = 1, left--;
    }
    free(v);
  }
  return true;
}

bool store_fill(const TensorStore *s, const char *name, const Shape *whole, const Piece *g, int64_t n, float *dst,
                FILE *err) {
  int first = find(s, name);
  if (first < 0) {
    fprintf(err, "carve: error: %s has no tensor '%s', which this program holds\n", s->path, name);
    return false;
  }
  const StorePiece *t = &s->pieces[first];
  if (t->bad) {
    fprintf(err, "carve: error: %s: tensor '%s': %s\n", s->path, printable(name), t->bad);
    return false;
  }
  if (!shape_eq(&t->shape, whole)) {
    fprintf(err, "carve: error: tensor '%s' is %s in %s, but %s in this program\n", name, shape_str(&t->shape), s->path,
            shape_str(whole));
    return false;
  }
  for (int i = first; i < s->npieces && !strcmp(s->pieces[i].tensor, name); i++)
    if (same_piece(&s->pieces[i], g, n)) return read_piece(s, &s->pieces[i], dst, err);
  int64_t total = shape_numel(whole), held = 0; /* memory only for what the files hold */
  for (int i = first; i < s->npieces && !strcmp(s->pieces[i].tensor, name) && held < total; i++)
    held += s->pieces[i].numel;
  if (held < total) {
    fprintf(err, "carve: error: %s holds %lld of the %lld elements of tensor '%s'\n", s->path, (long long)held,
            (long long)total, name);
    return false;
  }
  float *w = xmalloc(sizeof(float) * (size_t)total);
  uint8_t *covered = xcalloc((size_t)total, 1);
  bool ok = assemble(s, first, w, covered, err);
  for (int64_t e = 0; ok && e < n; e++) {
    int64_t i = piece_index(g, e);
    if (i >= total || i < 0) {
      dst[e] = 0; /* a shard's padding */
    } else if (!covered[i]) {
      fprintf(err, "carve: error: %s: element %lld of tensor '%s' is in none of its pieces\n", s->path, (long long)i,
              name);
      ok = false;
    } else {
      dst[e] = w[i];
    }
  }
  free(w);
  free(covered);
  return ok;
}

int store_tensors(const TensorStore *s, BufKind kind, const char **names, Shape *shapes) {
  int n = 0;
  for (int i = 0; i < s->npieces; i++)
    if ((i == 0 || strcmp(s->pieces[i].tensor, s->pieces[i - 1].tensor)) && s->pieces[i].kind == kind) {
      if (names) names[n] = s->pieces[i].tensor;
      if (shapes) shapes[n] = s->pieces[i].shape;
      n++;
    }
  return n;
}
