/* util.c: the compile arena, checked allocation, hashing and string maps, files, number
 * formatting, and the two ways carve stops on something it cannot handle:
 * carve_bug (a broken invariant, i.e. a bug in carve) and carve_fatal (a
 * failed external call or an unrecoverable runtime condition). */
#include "carve.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

_Noreturn void carve_bug(const char *file, int line, const char *cond, const char *msg) {
  fprintf(stderr, "carve: internal error at %s:%d: %s (%s)\n", file, line, msg, cond);
  fprintf(stderr, "carve: this is a bug in carve; please report it with the input that caused it\n");
  abort();
}

_Noreturn void carve_fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "carve: error: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

void *xmalloc(size_t size) {
  void *p = malloc(size ? size : 1);
  if (!p) carve_fatal("out of memory allocating %zu bytes", size);
  return p;
}

void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) carve_fatal("out of memory allocating %zu x %zu bytes", n, size);
  return p;
}

void *xrealloc(void *p, size_t size) {
  p = realloc(p, size ? size : 1);
  if (!p) carve_fatal("out of memory reallocating %zu bytes", size);
  return p;
}

/* The arena is a chain of blocks, one chain per thread; arena_reset frees
   them all at once.
   Blocks arena_release gives back are kept as spares for the next
   allocations (their pages are already mapped), and freed by arena_reset. */
typedef struct Block {
  struct Block *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
} Block;

static _Thread_local Block *arena_head, *arena_spare;

/* A block of at least cap bytes: a spare that is big enough, or a new one. */
static Block *new_block(size_t cap) {
  for (Block **s = &arena_spare; *s; s = &(*s)->next)
    if ((*s)->cap >= cap) {
      Block *b = *s;
      *s = b->next;
      return b;
    }
  Block *b = xmalloc(sizeof(Block) + cap);
  b->cap = cap;
  return b;
}

void *arena_alloc(size_t size) {
  size = (size + 15) & ~(size_t)15;
  if (!arena_head || arena_head->used + size > arena_head->cap) {
    Block *b = new_block(size > (1u << 20) ? size : (1u << 20));
    b->next = arena_head;
    b->used = 0;
    arena_head = b;
  }
  void *p = arena_head->data + arena_head->used;
  arena_head->used += size;
  memset(p, 0, size);
  return p;
}

static void free_blocks(Block *b) {
  while (b) {
    Block *next = b->next;
    free(b);
    b = next;
  }
}

void arena_reset(void) {
  free_blocks(arena_head);
  free_blocks(arena_spare);
  arena_head = arena_spare = NULL;
}

ArenaMark arena_mark(void) { return (ArenaMark){arena_head, arena_head ? arena_head->used : 0}; }

void arena_release(ArenaMark m) {
  while (arena_head && arena_head != m.block) {
    Block *next = arena_head->next;
    arena_head->next = arena_spare;
    arena_spare = arena_head;
    arena_head = next;
  }
  CARVE_ASSERT(arena_head == m.block, "an arena mark released after an older one or after arena_reset");
  if (arena_head) arena_head->used = m.used;
}

void arena_switch(Arena *a) {
  Block *h = arena_head, *s = arena_spare;
  arena_head = a->head, arena_spare = a->spare;
  a->head = h, a->spare = s;
}

void arena_free(Arena *a) {
  free_blocks(a->head);
  free_blocks(a->spare);
  a->head = a->spare = NULL;
}

char *arena_strndup(const char *s, size_t n) {
  char *p = arena_alloc(n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *arena_strdup(const char *s) { return arena_strndup(s, strlen(s)); }

char *arena_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = arena_alloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}

void ptrvec_push(PtrVec *pv, void *p) {
  if (pv->n == pv->cap) {
    int cap = pv->cap ? pv->cap * 2 : 16;
    void **v = arena_alloc(sizeof(void *) * (size_t)cap);
    if (pv->n) memcpy(v, pv->v, sizeof(void *) * (size_t)pv->n);
    pv->v = v;
    pv->cap = cap;
  }
  pv->v[pv->n++] = p;
}

uint64_t hash_bytes(const void *p, size_t n, uint64_t seed) {
  const unsigned char *s = p;
  uint64_t h = 1469598103934665603ull ^ seed;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t hash_str(const char *s) { return hash_bytes(s, strlen(s), 0); }

/* Linear probing from the key's hash; cap is a power of two. */
static int strmap_find(const StrMap *m, const char *key) {
  int mask = m->cap - 1, i = (int)(hash_str(key) & (uint64_t)mask);
  while (m->keys[i] && strcmp(m->keys[i], key) != 0) i = (i + 1) & mask;
  return i;
}

int *strmap_get(const StrMap *m, const char *key) {
  if (!m->cap) return NULL;
  int i = strmap_find(m, key);
  return m->keys[i] ? &m->vals[i] : NULL;
}

static void strmap_grow(StrMap *m) {
  StrMap old = *m;
  m->cap = old.cap ? 2 * old.cap : 256;
  CARVE_ASSERT(m->cap > 0, "a map of more than 2^30 strings");
  m->keys = xcalloc((size_t)m->cap, sizeof(char *));
  m->vals = xcalloc((size_t)m->cap, sizeof(int));
  for (int i = 0; i < old.cap; i++)
    if (old.keys[i]) {
      int j = strmap_find(m, old.keys[i]);
      m->keys[j] = old.keys[i];
      m->vals[j] = old.vals[i];
    }
  free(old.keys);
  free(old.vals);
}

int *strmap_put(StrMap *m, const char *key, int if_new) {
  if (2 * (m->n + 1) > m->cap) strmap_grow(m);
  int i = strmap_find(m, key);
  if (!m->keys[i]) {
    m->keys[i] = key;
    m->vals[i] = if_new;
    m->n++;
  }
  return &m->vals[i];
}

void strmap_free(StrMap *m) {
  free(m->keys);
  free(m->vals);
  *m = (StrMap){0};
}

char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    fclose(f);
    errno = EISDIR;
    return NULL;
  }
  size_t cap = 1 << 16, n = 0;
  char *buf = xmalloc(cap + 1);
  for (;;) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (n < cap) break;
    cap *= 2;
    buf = xrealloc(buf, cap + 1);
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    errno = EIO;
    return NULL;
  }
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

static const char *file_kind(mode_t m) {
  return S_ISDIR(m)    ? "a directory"
         : S_ISFIFO(m) ? "a FIFO"
         : S_ISCHR(m)  ? "a character device"
         : S_ISBLK(m)  ? "a block device"
         : S_ISSOCK(m) ? "a socket"
         : S_ISLNK(m)  ? "a symbolic link"
                       : "not a regular file";
}

static bool regular_ok(const struct stat *st, size_t limit, char *why, size_t n) {
  char b[32], l[32];
  if (!S_ISREG(st->st_mode)) {
    snprintf(why, n, "%s, not a regular file", file_kind(st->st_mode));
    return false;
  }
  if (st->st_size < 0 || (uintmax_t)st->st_size > limit) {
    snprintf(why, n, "%s, more than the limit of %s", fmt_bytes((double)st->st_size, b, sizeof b),
             fmt_bytes((double)limit, l, sizeof l));
    return false;
  }
  return true;
}

/* stat first, so nothing that is not a regular file is ever opened for
 * reading; then open without blocking and check again what was opened (the
 * path may have changed in between). */
int open_input(const char *path, size_t limit, size_t *size, char *why, size_t n) {
  struct stat st;
  why[0] = 0;
  if (stat(path, &st) != 0) {
    snprintf(why, n, "%s", strerror(errno));
    return -1;
  }
  if (!regular_ok(&st, limit, why, n)) return -1;
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, n, "%s", strerror(errno));
    return -1;
  }
  if (fstat(fd, &st) != 0 || !regular_ok(&st, limit, why, n)) {
    if (!why[0]) snprintf(why, n, "%s", strerror(errno));
    close(fd);
    return -1;
  }
  *size = (size_t)st.st_size;
  return fd;
}

bool read_exact(int fd, void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t got = read(fd, (char *)buf + done, n - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    done += (size_t)got;
  }
  return true;
}

/* Reads until the end of the file, not to st_size: files in /proc say 0, and
 * a file may grow while it is read; either way no more than limit bytes. */
char *read_file_limit(const char *path, size_t limit, size_t *len, char *why, size_t n) {
  size_t size, got = 0;
  int fd = open_input(path, limit, &size, why, n);
  if (fd < 0) return NULL;
  size_t cap = size < limit ? size + 1 : limit + 1;
  if (cap < 4096) cap = 4096;
  char *buf = xmalloc(cap + 1);
  for (;;) {
    if (got == cap) {
      if (cap > limit) break;
      cap = cap > limit / 2 ? limit + 1 : 2 * cap;
      buf = xrealloc(buf, cap + 1);
    }
    ssize_t r = read(fd, buf + got, cap - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      snprintf(why, n, "%s", strerror(errno));
      break;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  close(fd);
  if (!why[0] && got > limit) {
    char l[32];
    snprintf(why, n, "more than the limit of %s", fmt_bytes((double)limit, l, sizeof l));
  }
  if (why[0]) {
    free(buf);
    return NULL;
  }
  buf[got] = 0;
  *len = got;
  return buf;
}

double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double cpu_seconds(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru)) return 0;
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

int int_str(int64_t v, char *out) {
  char rev[24];
  int n = 0, len = 0;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do rev[n++] = (char)('0' + u % 10);
  while (u /= 10);
  if (v < 0) out[len++] = '-';
  while (n) out[len++] = rev[--n];
  out[len] = 0;
  return len;
}

static const char *fmt_scaled(double v, double base, const char *const *units, char *buf, size_t n) {
  int u = 0;
  while ((v >= base || v <= -base) && units[u + 1]) {
    v /= base;
    u++;
  }
  snprintf(buf, n, u ? "%.2f%s" : "%.0f%s", v, units[u]);
  return buf;
}

const char *fmt_si(double v, char *buf, size_t n) {
  static const char *const u[] = {"", "K", "M", "G", "T", "P", "E", NULL};
  return fmt_scaled(v, 1000, u, buf, n);
}

const char *fmt_bytes(double v, char *buf, size_t n) {
  static const char *const u[] = {" B", " KiB", " MiB", " GiB", " TiB", " PiB", NULL};
  return fmt_scaled(v, 1024, u, buf, n);
}

/* OpenMP threads that spin while waiting steal the cores that the other
 * ranks on the machine need. libgomp reads its wait policy before main runs,
 * so set it and start again, once. */
void carve_passive_threads(char **argv) {
  if (getenv("OMP_WAIT_POLICY")) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
  /* exec failed: go on with the default policy */
}

/* mkstemp makes files only their owner may read; a file carve writes gets
   the usual permissions (0666 less the umask), as fopen would give it. */
static bool fchmod_default(const char *tmp) {
  mode_t mask = umask(0);
  umask(mask);
  return chmod(tmp, 0666 & ~mask) == 0;
}

bool output_free(const char *path, char *why, size_t n) {
  struct stat st;
  if (lstat(path, &st) != 0 || S_ISREG(st.st_mode)) return true;
  snprintf(why, n, "it exists and is %s, not a regular file", file_kind(st.st_mode));
  return false;
}

bool rename_into_place(const char *tmp, const char *path) {
  struct stat st;
  if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
    errno = EEXIST;
    return false;
  }
  return rename(tmp, path) == 0;
}

FILE *temp_beside(const char *path, const char **tmp) {
  const char *slash = strrchr(path, '/');
  int dirlen = slash ? (int)(slash - path) + 1 : 0;
  char *name = arena_printf("%.*s.%s.XXXXXX", dirlen, path, slash ? slash + 1 : path);
  int fd = mkstemp(name); /* O_CREAT | O_EXCL: never an existing file, never through a link */
  FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
  if (fd >= 0 && !f) {
    int e = errno;
    close(fd);
    remove(name);
    errno = e;
  }
  *tmp = name;
  return f;
}

bool temp_close(FILE *f, const char *tmp, const char *path, bool keep) {
  if (!f) return false;
  int e = errno; /* without keep: why the writing failed */
  bool ok = keep && fflush(f) == 0 && !ferror(f) && fsync(fileno(f)) == 0;
  if (keep) e = ok ? 0 : errno;
  if (ok) posix_fadvise(fileno(f), 0, 0, POSIX_FADV_DONTNEED); /* on disk: its pages need not stay cached */
  if (fclose(f) != 0 && ok) ok = false, e = errno;
  if (ok && fchmod_default(tmp) && rename_into_place(tmp, path)) return true;
  if (ok) e = errno;
  remove(tmp);
  errno = e ? e : EIO;
  return false;
}

bool sync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return false;
  bool ok = fsync(fd) == 0;
  close(fd);
  return ok;
}

uint64_t hash_words(const void *p, size_t n, uint64_t seed) {
  const unsigned char *s = p;
  uint64_t h = FNV64_BASIS ^ seed, w;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    memcpy(&w, s + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
  return h;
}

bool same_but_numbers(const char *p, const char *q) {
  for (;; p++, q++) {
    while (*p >= '0' && *p <= '9') p++;
    while (*q >= '0' && *q <= '9') q++;
    if (*p != *q) return false;
    if (!*p) return true;
  }
}
