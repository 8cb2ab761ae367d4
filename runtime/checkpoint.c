/* checkpoint.c: checkpoints of a run, written and resumed.
 *
 * Writing (after every `every` steps and the last): each rank writes its
 * pieces of the parameters and the optimizer state (f32) to
 * CK/step-NNNNNNNN/rankR.shard; rank 0 then writes manifest.json, which
 * lists every rank's pieces (tensor, whole shape, geometry, place, hash).
 * Each file goes to a temporary file created exclusively in the folder,
 * is flushed to disk and renamed into place, the manifest last: a
 * checkpoint without its manifest does not exist. Then checkpoints beyond
 * the newest `keep`, and unfinished ones older than this, are removed.
 *
 * Resuming: every rank fills its own pieces from the checkpoint's pieces
 * (store.c), whatever plan wrote them, and the run continues after the
 * checkpoint's step. Nothing else carries over between steps: gradients
 * are zeroed at each step's start, bf16 copies remade, and the data of a
 * step is drawn from (seed, step). docs/checkpoints.md. */
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"
#include "store.h"

static bool persistent(BufKind k) { return k == BUF_PARAM || k == BUF_OPTSTATE; }

const char *checkpoint_folder(const char *ck, int step) { return arena_printf("%s/step-%08d", ck, step); }

/* Test hook: CARVE_FAULT=checkpoint-shard or checkpoint-manifest kills the
   process (SIGKILL, as a crash would) at that point of a checkpoint write. */
static void fault(const char *where) {
  const char *f = getenv("CARVE_FAULT");
  if (f && !strcmp(f, where)) raise(SIGKILL);
}

static void piece_json(FILE *m, const Program *p, int b, int64_t at, uint64_t hash, bool first) {
  const Buffer *B = &p->bufs[b];
  Piece g = piece_of(program_init_of(p, b));
  fprintf(m, "%s\n  {\"tensor\": ", first ? "" : ",");
  json_write_str(m, B->name);
  fprintf(m,
          ", \"kind\": \"%s\", \"shape\": %s, \"numel\": %" PRId64 ", \"offset\": %" PRId64 ", \"axis\": %" PRId64
          ", \"parts\": %" PRId64 ", \"part\": %" PRId64 ", \"len\": %" PRId64 ", \"inner\": %" PRId64
          ", \"at\": %" PRId64 ", \"hash\": \"%016" PRIx64 "\"}",
          buf_kind_names[B->kind], shape_str(&B->whole), shape_numel(&B->shape), g.offset, g.axis, g.parts, g.part,
          g.len, g.inner, at, hash);
}

static int64_t shard_bytes(const Program *p) {
  int64_t n = 0;
  for (int b = 0; b < p->nbufs; b++)
    if (persistent(p->bufs[b].kind)) n += p->bufs[b].bytes;
  return n;
}

/* This rank's shard; *index gets its manifest entry (malloc). */
static bool write_shard(Run *R, const char *dir, char **index) {
  const Program *p = R->p;
  const char *path = arena_printf("%s/rank%d.shard", dir, p->rank), *tmp;
  size_t len, cap = 0;
  FILE *m = open_memstream(index, &len), *f = temp_beside(path, &tmp);
  fprintf(m, "{\"file\": \"rank%d.shard\", \"pieces\": [", p->rank);
  int64_t at = 0;
  void *host = NULL;
  bool ok = f != NULL, first = true;
  for (int b = 0; ok && b < p->nbufs; b++) {
    const Buffer *B = &p->bufs[b];
    if (!persistent(B->kind)) continue;
    if ((size_t)B->bytes > cap) host = xrealloc(host, cap = (size_t)B->bytes);
    R->be->download(R->be, host, B->offset, B->bytes);
    ok = fwrite(host, 1, (size_t)B->bytes, f) == (size_t)B->bytes;
    piece_json(m, p, b, at, hash_words(host, (size_t)B->bytes, 0), first);
    at += B->bytes, first = false;
    fault("checkpoint-shard"); /* one piece written, the rest not */
  }
  fprintf(m, "]}");
  fclose(m);
  free(host);
  return temp_close(f, tmp, path, ok);
}

static bool write_manifest(Run *R, const char *dir, int step, const char *all, int64_t block) {
  const Program *p = R->p;
  const char *path = arena_printf("%s/manifest.json", dir), *tmp;
  FILE *f = temp_beside(path, &tmp);
  if (!f) return false;
  fprintf(f, "{\n\"format\": \"carve-checkpoint\",\n\"version\": %d,\n\"carve\": \"%s\",\n\"model\": ",
          CARVE_CHECKPOINT_FORMAT, CARVE_VERSION);
  json_write_str(f, p->model);
  fprintf(f, ",\n\"plan\": \"%016" PRIx64 "\",\n\"step\": %d,\n\"world\": %d,\n\"precision\": \"%s\",\n", p->plan_id,
          step, p->world, precision_name(p->precision));
  fprintf(f, "\"seed\": %" PRIu64 ",\n\"ranks\": [\n", p->seed);
  for (int r = 0; r < p->world; r++) fprintf(f, "%s%s\n", all + (size_t)r * (size_t)block, r + 1 < p->world ? "," : "");
  fprintf(f, "]\n}\n");
  return temp_close(f, tmp, path, true) && sync_dir(dir);
}

/* The step of a folder named step-NNNNNNNN (8 digits or more, nothing else), or -1. */
static int folder_step(const char *name) {
  if (strncmp(name, "step-", 5) != 0 || strlen(name + 5) < 8 || strlen(name + 5) > 10) return -1;
  long long step = 0;
  for (const char *c = name + 5; *c; c++) {
    if (*c < '0' || *c > '9') return -1;
    step = step * 10 + (*c - '0');
  }
  return step <= 2147483647 ? (int)step : -1;
}

static bool complete(const char *ck, const char *name) {
  struct stat st;
  return stat(arena_printf("%s/%s/manifest.json", ck, name), &st) == 0 && S_ISREG(st.st_mode);
}

/* Removes every file in a folder. */
static void empty_folder(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(arena_printf("%s/%s", dir, e->d_name));
  if (d) closedir(d);
}

/* A checkpoint's folder goes, its manifest first: it stops existing before its shards do. */
static void remove_checkpoint(const char *dir) {
  unlink(arena_printf("%s/manifest.json", dir));
  empty_folder(dir);
  rmdir(dir);
}

/* The newest complete checkpoint in ck before step `before`, or -1. */
static int newest_before(const char *ck, int before) {
  DIR *d = opendir(ck);
  struct dirent *e;
  int newest = -1;
  while (d && (e = readdir(d))) {
    int s = folder_step(e->d_name);
    if (s > newest && s < before && complete(ck, e->d_name)) newest = s;
  }
  if (d) closedir(d);
  return newest;
}

int checkpoint_newest(const char *ck) { return newest_before(ck, 2147483647); }

/* After the checkpoint of `step` is complete: removes the checkpoints of
   later steps (a run resumed from an earlier checkpoint abandoned them),
   unfinished ones, and all but the newest `keep`. */
static void prune(const char *ck, int step, int keep) {
  int n = 0, cap = 0, *steps = NULL;
  DIR *d = opendir(ck);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    int s = folder_step(e->d_name);
    if (s < 0) continue;
    if (s != step && (!complete(ck, e->d_name) || s > step)) {
      remove_checkpoint(arena_printf("%s/%s", ck, e->d_name));
      continue;
    }
    if (n == cap) steps = xrealloc(steps, sizeof(int) * (size_t)(cap = cap ? 2 * cap : 16));
    steps[n++] = s;
  }
  if (d) closedir(d);
  for (int i = 0; i < n; i++) { /* older than the keep-th newest */
    int newer = 0;
    for (int j = 0; j < n; j++) newer += steps[j] > steps[i];
    if (newer >= keep) remove_checkpoint(checkpoint_folder(ck, steps[i]));
  }
  free(steps);
}

/* Rank 0 makes the step's folder (checkpoint_open made CK); a checkpoint
   of this step already there (a run resumed from an earlier one) stops
   existing before it is written again, and whatever an earlier attempt left
   in it (another world size's shards, a failed write's) goes. */
static bool prepare(const char *dir) {
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) return false;
  struct stat st;
  if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return errno = ENOTDIR, false;
  if (unlink(arena_printf("%s/manifest.json", dir)) != 0 && errno != ENOENT) return false;
  empty_folder(dir);
  return sync_dir(dir);
}

/* The first failing rank's message: every rank writes its own to a buffer,
   and the lowest rank that failed prints it. */
static bool agree_loud(Transport *t, bool ok, const char *msg) {
  int first = -(int)t->max(t, ok ? -(double)t->world : -(double)t->rank);
  if (first < t->world && first == t->rank && msg) fputs(msg, stderr);
  return first >= t->world;
}

/* agree_loud for a write: the first rank that failed says what it could not write and why. */
static bool agree_written(Transport *t, bool ok, int step, const char *what) {
  char *msg = ok ? NULL
                 : arena_printf("carve: error: step %d: cannot write the checkpoint %s: %s; earlier "
                                "checkpoints are kept\n",
                                step, what, strerror(errno ? errno : EIO));
  return agree_loud(t, ok, msg);
}

bool checkpoint_write(Run *R, int step) {
  const RunOptions *o = R->o;
  Transport *t = R->net;
  double t0 = now_seconds();
  const char *dir = checkpoint_folder(o->checkpoint_dir, step);
  bool ok = agree_written(t, t->rank != 0 || prepare(dir), step, dir);
  char *mine = NULL;
  ok = ok && agree_written(t, write_shard(R, dir, &mine), step, arena_printf("%s/rank%d.shard", dir, t->rank));
  int64_t len = mine ? (int64_t)strlen(mine) : 0, block = (int64_t)t->max(t, (double)len) + 1;
  char *in = xcalloc((size_t)block, 1), *all = xcalloc((size_t)block * (size_t)t->world, 1);
  if (mine) memcpy(in, mine, (size_t)len);
  ok = ok && t->gather_all(t, in, block, all);
  fault("checkpoint-manifest");
  bool mine_ok = true;
  if (ok && t->rank == 0) {
    mine_ok = write_manifest(R, dir, step, all, block);
    if (mine_ok) prune(o->checkpoint_dir, step, o->checkpoint_keep > 0 ? o->checkpoint_keep : 1);
  }
  ok = ok && agree_written(t, mine_ok, step, arena_printf("%s/manifest.json", dir));
  double bytes = t->sum(t, (double)shard_bytes(R->p));
  if (ok && t->rank == 0 && !o->quiet) {
    char b[32];
    printf("checkpoint %s: %s in %.2f s\n", dir, fmt_bytes(bytes, b, sizeof b), now_seconds() - t0);
    fflush(stdout);
  }
  free(mine);
  free(in);
  free(all);
  return ok;
}

/* The folder, and its lock: CK/.lock, held (flock) by rank 0 while the run lasts. */
static const char *lock_folder(Run *R, const char *ck) {
  struct stat st;
  if (mkdir(ck, 0777) != 0 && errno != EEXIST) return strerror(errno);
  if (stat(ck, &st) != 0 || !S_ISDIR(st.st_mode)) return "it is not a folder";
  int fd = open(arena_printf("%s/.lock", ck), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0666);
  if (fd < 0) return strerror(errno);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return "another run is writing checkpoints into it";
  }
  R->ck_lock = fd + 1;
  return NULL;
}

bool checkpoint_open(Run *R) {
  const char *ck = R->o->checkpoint_dir, *why = R->net->rank == 0 && *ck ? lock_folder(R, ck) : NULL;
  if (R->net->rank == 0 && !*ck) why = "an empty name";
  char *msg = why ? arena_printf("carve: error: --checkpoint-dir '%s': %s\n", ck, why) : NULL;
  return agree_loud(R->net, !why, msg);
}

/* ------------------------------------------------------------ resuming */

const char *checkpoint_resolve(const char *path, const char **why) {
  struct stat st;
  errno = 0;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
    *why = arena_printf("'%s' is not a checkpoint folder (%s)", path, strerror(errno ? errno : ENOTDIR));
    return NULL;
  }
  if (stat(arena_printf("%s/manifest.json", path), &st) == 0) return path;
  int step = checkpoint_newest(path);
  if (step >= 0) return checkpoint_folder(path, step);
  *why = arena_printf("'%s' holds no complete checkpoint (a step-N folder with its manifest.json)", path);
  return NULL;
}

/* Fills this rank's params (and optimizer state when `state`) from s. */
static bool fill_buffers(Run *R, const TensorStore *s, bool state, FILE *err) {
  const Program *p = R->p;
  float *host = NULL;
  size_t cap = 0;
  bool ok = true;
  for (int b = 0; ok && b < p->nbufs; b++) {
    const Buffer *B = &p->bufs[b];
    if (B->kind != BUF_PARAM && !(state && B->kind == BUF_OPTSTATE)) continue;
    if ((size_t)B->bytes > cap) host = xrealloc(host, cap = (size_t)B->bytes);
    Piece g = piece_of(program_init_of(p, b));
    ok = store_fill(s, B->name, &B->whole, &g, shape_numel(&B->shape), host, err);
    if (ok) R->be->upload(R->be, B->offset, host, B->bytes);
  }
  free(host);
  return ok;
}

/* What carries over when the checkpoint came from another plan. */
static void describe_resume(const Run *R, const TensorStore *s, const char *path) {
  const Program *p = R->p;
  if (R->o->quiet || R->net->rank != 0) return;
  printf("resuming after step %d from %s", s->step, path);
  if (s->plan != p->plan_id)
    printf(" (another plan: %d rank%s, %s; its tensors are resharded onto this one's)", s->world,
           s->world == 1 ? "" : "s", precision_name(s->precision));
  printf("\n");
  if (s->seed != p->seed)
    printf("note: the checkpoint's seed is %" PRIu64 ", this program's %" PRIu64 ": the data from here on differs\n",
           s->seed, p->seed);
  fflush(stdout);
}

/* Two names of one folder (ck/, ./ck and ck are one). */
static bool same_folder(const char *a, const char *b) {
  struct stat x, y;
  return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

/* After a checkpoint that could not be read was picked as the newest in a
   folder of them: the one before it, which may be whole. */
static void suggest_earlier(const char *ck, const char *picked, FILE *err) {
  int s = folder_step(strrchr(picked, '/') ? strrchr(picked, '/') + 1 : picked);
  int earlier = s > 0 ? newest_before(ck, s) : -1;
  if (earlier >= 0)
    fprintf(err, "carve: note: an earlier checkpoint is %s: resume from it with --resume %s\n",
            checkpoint_folder(ck, earlier), checkpoint_folder(ck, earlier));
}

bool checkpoint_restore(Run *R) {
  const RunOptions *o = R->o;
  char *msg = NULL;
  size_t len = 0;
  FILE *err = open_memstream(&msg, &len);
  struct stat st;
  const char *from = o->resume ? o->resume : o->init_from, *why = NULL, *path = from;
  if (o->resume || (stat(from, &st) == 0 && S_ISDIR(st.st_mode))) path = checkpoint_resolve(from, &why);
  bool fresh = o->resume && !path && o->checkpoint_dir && same_folder(o->resume, o->checkpoint_dir);
  if (fresh) { /* a restartable command's first run: nothing to resume yet */
    if (R->net->rank == 0 && !o->quiet) printf("no checkpoint in %s yet: starting at step 1\n", o->resume);
    fclose(err);
    free(msg);
    return true;
  }
  if (!path) fprintf(err, "carve: error: %s: %s\n", o->resume ? "--resume" : "--init-from", why);
  TensorStore *s = path ? store_open(path, err) : NULL;
  if (s && o->resume && !s->checkpoint) {
    fprintf(err, "carve: error: --resume takes a checkpoint folder; %s is a file (start from it with --init-from)\n",
            path);
    store_close(s);
    s = NULL;
  }
  bool ok = s && fill_buffers(R, s, o->resume != NULL, err);
  if (!ok && path && path != from) suggest_earlier(from, path, err);
  fclose(err);
  ok = agree_loud(R->net, ok, msg);
  if (ok && o->resume) {
    R->step = s->step;
    describe_resume(R, s, path);
  }
  store_close(s);
  free(msg);
  return ok;
}
