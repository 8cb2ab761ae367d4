/* interp.c: the step loop. A program runs through a backend (backend.h):
 * the interpreter checks the program (program_verify, then the backend's
 * load), runs the init list once, then each step's instructions in order,
 * compute through the backend and communication through the device
 * communication interface (comm.c, comm.h), and ends the step with the backend's one synchronize, which
 * reports the loss and any bad data a kernel found. It knows no kernel. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "kmath.h"
#include "runtime.h"

/* A transfer on the step's thread; false after it failed. */
static bool comm_here(Run *R, const Instr *in, int i, bool init, const char **err) {
  comm_doing(R, in, i, init);
  return !(*err = comm_exec(R, in));
}

/* Runs a list; false after printing the error a kernel or the transport reported. */
static bool run_list(Run *R, const Instr *list, int n, bool init, StepStatus *st) {
  bool prof = R->o->profile, traced = R->trace && !init, async = R->ov && !init;
  StepInfo si = {.step = R->step, .data = R->o->data};
  si.data_step = (uint64_t)(R->o->data_step ? R->o->data_step : R->step);
  const char *comm_error = NULL;
  int comm_at = -1;
  if (async) overlap_begin(R);
  for (int i = 0; i < n && !comm_error; i++) {
    const Instr *in = &list[i];
    bool comm = instr_comm(in), clock = comm || async || prof || traced; /* plain compute is not timed */
    double t0 = clock ? now_seconds() : 0;
    if (async && !overlap_need(R, i, &comm_error, &comm_at)) break;
    if (comm && async)
      overlap_post(R, i, &comm_error, &comm_at);
    else if (comm && !comm_here(R, in, i, init, &comm_error))
      comm_at = i; /* later collectives would wait forever */
    double t1 = clock ? now_seconds() : 0;
    if (comm || async) R->exposed_s += t1 - t0; /* the transfer, or the wait for one */
    if (comm && async) continue;                /* the thread times it */
    if (!comm) R->be->exec(R->be, in, i, init, &si);
    if (!prof && !traced) continue;
    double start = comm ? t0 : t1, end = comm ? t1 : now_seconds();
    if (traced) R->trace[2 * i] = start, R->trace[2 * i + 1] = end;
    if (prof) {
      R->op_time[in->op] += end - start;
      R->op_count[in->op]++;
    }
  }
  if (async) { /* every posted transfer done (or skipped after a failure): the thread is idle */
    double t0 = now_seconds();
    const char *e = NULL;
    int at = -1;
    if (!overlap_end(R, &e, &at) && !comm_error) comm_error = e, comm_at = at;
    R->exposed_s += now_seconds() - t0;
  }
  R->net->doing[0] = 0;
  R->be->synchronize(R->be, st);
  if (!st->error && comm_error) st->error = comm_error, st->error_instr = comm_at, st->error_init = init;
  if (!st->error) return true;
  fprintf(stderr, "carve: error: rank %d, %s, instruction %d (%s): %s\n", R->p->rank,
          init ? "init" : arena_printf("step %d", R->step), st->error_instr, op_info[list[st->error_instr].op].name,
          st->error);
  return false;
}

/* The checks before the first step that concern the run, not the program. */
static bool fits_run(const Program *p, const RunOptions *o, const Transport *net) {
  if (p->world != net->world) {
    if (net->rank == 0) /* every rank sees it; one says it */
      fprintf(stderr, "carve: error: the program is for %d rank%s, but this run has %d: start it with mpirun -np %d\n",
              p->world, p->world == 1 ? "" : "s", net->world, p->world);
    return false;
  }
  if (p->rank != net->rank) {
    fprintf(stderr, "carve: error: rank %d was given the program of rank %d\n", net->rank, p->rank);
    return false;
  }
  if (o->data && p->vocab && o->data->vocab > p->vocab) {
    fprintf(stderr, "carve: error: %s has a vocabulary of %lld tokens, but the model's token inputs take %lld\n",
            o->data->path, (long long)o->data->vocab, (long long)p->vocab);
    return false;
  }
  if (o->data && p->tokens_per_step &&
      o->data->n < 2 * (p->tokens_per_step / (p->microbatches ? p->microbatches : 1))) {
    fprintf(stderr, "carve: error: %s has %lld tokens, too few for batches of this model\n", o->data->path,
            (long long)o->data->n);
    return false;
  }
  return true;
}

/* The collectives this rank runs on group g, in order (op, dtype, element
   counts), folded into one hash; 0 when the rank is not in the group. */
static uint64_t group_hash(const Program *p, int g) {
  if (group_pos(p, g, p->rank) < 0) return 0;
  uint64_t h = 1;
  const Instr *lists[2] = {p->init, p->step};
  int counts[2] = {p->ninit, p->nstep};
  for (int s = 0; s < 2; s++)
    for (int i = 0; i < counts[s]; i++) {
      const Instr *in = &lists[s][i];
      bool talks = (op_info[in->op].flags & OPF_COMM) && in->op != OP_SEND && in->op != OP_RECV && in->op != OP_SHARD &&
                   in->op != OP_SPLIT_DIM;
      if (!talks || in->i[0] != g) continue;
      int64_t rec[4] = {in->op, p->bufs[in->in[0]].dtype, shape_numel(&p->bufs[in->in[0]].shape),
                        shape_numel(&p->bufs[in->out].shape)};
      h = hash_bytes(rec, sizeof rec, h);
    }
  return h ? h : 1;
}

/* Every member of a group must run the same collectives on it, with the
   same counts and dtypes, or MPI reads or writes past a buffer: the hashes
   of every rank's groups, compared before the first step. */
static bool collectives_agree(const Program *p, Transport *t) {
  if (t->world == 1) return true;
  int n = p->ngroups;
  if (t->max(t, n) != -t->max(t, -n)) {
    if (t->rank == 0)
      fprintf(stderr, "carve: error: the ranks' programs list different rank groups: they come from different plans\n");
    return false;
  }
  uint64_t *mine = xcalloc((size_t)n + 1, sizeof(uint64_t)),
           *all = xcalloc(((size_t)n + 1) * (size_t)t->world, sizeof(uint64_t));
  for (int g = 0; g < n; g++) mine[g] = group_hash(p, g);
  bool ok = t->gather_all(t, mine, (int64_t)sizeof(uint64_t) * (n + 1), all);
  for (int g = 0; ok && g < n; g++)
    for (int r = 0, first = -1; r < t->world; r++) {
      uint64_t h = all[(size_t)r * (size_t)(n + 1) + (size_t)g];
      if (!h) continue;
      if (first < 0) {
        first = r;
      } else if (h != all[(size_t)first * (size_t)(n + 1) + (size_t)g]) {
        if (t->rank == 0)
          fprintf(stderr,
                  "carve: error: ranks %d and %d run different collectives on group %d: their programs come from "
                  "different plans\n",
                  first, r, g);
        ok = false;
        break;
      }
    }
  free(mine);
  free(all);
  return ok;
}

/* Every rank's program comes from one plan: a folder that mixes the
   programs of two (two compiles into one folder, or one that stopped
   half-way) is refused before any collective could read past a buffer. */
static bool plans_agree(const Program *p, Transport *t) {
  if (t->world == 1) return true;
  uint64_t *all = xcalloc((size_t)t->world, sizeof(uint64_t));
  bool ok = t->gather_all(t, &p->plan_id, sizeof(uint64_t), all);
  for (int r = 1; ok && r < t->world; r++)
    if (all[r] != all[0]) {
      if (t->rank == 0)
        fprintf(stderr,
                "carve: error: the programs of ranks 0 and %d come from different plans (%016llx, %016llx): the "
                "folder mixes two compiles; compile the plan again into an empty folder\n",
                r, (unsigned long long)all[0], (unsigned long long)all[r]);
      ok = false;
    }
  free(all);
  return ok;
}

/* Every check before the first step ends in an agreement over the world,
   so a failure on one rank stops all of them: the failing rank says why,
   the others stop quietly, and none waits for a peer that gave up. */
Runtime *runtime_new(const Program *p, const RunOptions *o) {
  Transport *net = o->net, *own = NULL;
  if (!net) net = own = transport_local();
  Runtime *rt = xcalloc(1, sizeof(Runtime));
  Run *R = &rt->r;
  R->p = p;
  R->o = o;
  R->net = net;
  R->own_net = own;
  char why[256] = "";
  bool ok = program_verify(p, stderr) && fits_run(p, o, net);
  if (ok) {
    R->be = o->backend ? o->backend : backend_open(o->backend_name, why, sizeof why);
    if (!R->be) fprintf(stderr, "carve: error: %s\n", why);
    ok = R->be && R->be->load(R->be, p, stderr);
  }
  ok = net->agree(net, ok) && plans_agree(p, net) && collectives_agree(p, net) &&
       net->groups(net, p->ngroups, p->group_size, p->group_ranks) && comm_open(R);
  StepStatus st;
  ok = net->agree(net, ok && run_list(R, p->init, p->ninit, true, &st) && comm_flush(R) && overlap_open(R));
  if (ok && o->checkpoint_dir) ok = checkpoint_open(R);
  if (ok && (o->resume || o->init_from)) ok = checkpoint_restore(R);
  if (!ok) {
    runtime_free(rt);
    return NULL;
  }
  return rt;
}

int runtime_step(Runtime *rt, double *loss) {
  Run *R = &rt->r;
  R->step++;
  StepStatus st;
  if (!run_list(R, R->p->step, R->p->nstep, false, &st)) return 1;
  snprintf(R->net->doing, sizeof R->net->doing, "end of step %d (its sends, the loss over the ranks)", R->step);
  if (!comm_flush(R) || !R->net->flush(R->net)) return 1;
  /* the loss instructions weigh each rank's share; the step's loss is their sum */
  double l = R->net->world > 1 ? R->net->sum(R->net, st.loss) : st.loss;
  R->net->doing[0] = 0;
  if (loss) *loss = l;
  return 0;
}

/* The buffer named `name`, or NULL. */
static const Buffer *named(const Runtime *rt, const char *name) {
  const Program *p = rt->r.p;
  for (int b = 0; b < p->nbufs; b++)
    if (strcmp(p->bufs[b].name, name) == 0) return &p->bufs[b];
  return NULL;
}

void *runtime_buffer(Runtime *rt, const char *name, int64_t *numel) {
  const Buffer *B = named(rt, name);
  if (!B) return NULL;
  if (numel) *numel = shape_numel(&B->shape);
  return rt->r.be->host(rt->r.be, B->offset);
}

/* The float buffer `name` of n elements, or NULL. */
static const Buffer *float_buffer(Runtime *rt, const char *name, int64_t n) {
  const Buffer *B = named(rt, name);
  return B && (B->dtype == DT_F32 || B->dtype == DT_BF16) && shape_numel(&B->shape) == n ? B : NULL;
}

bool runtime_read(Runtime *rt, const char *name, float *dst, int64_t n) {
  const Buffer *b = float_buffer(rt, name, n);
  if (!b) return false;
  Backend *be = rt->r.be;
  if (b->dtype == DT_F32) {
    be->download(be, dst, b->offset, n * (int64_t)sizeof(float));
    return true;
  }
  uint16_t *half = xmalloc(sizeof(uint16_t) * (size_t)(n > 0 ? n : 1));
  be->download(be, half, b->offset, n * (int64_t)sizeof(uint16_t));
  for (int64_t i = 0; i < n; i++) dst[i] = km_f32(half[i]);
  free(half);
  return true;
}

bool runtime_write(Runtime *rt, const char *name, const float *src, int64_t n) {
  const Buffer *b = float_buffer(rt, name, n);
  if (!b) return false;
  Backend *be = rt->r.be;
  if (b->dtype == DT_F32) {
    be->upload(be, b->offset, src, n * (int64_t)sizeof(float));
    return true;
  }
  uint16_t *half = xmalloc(sizeof(uint16_t) * (size_t)(n > 0 ? n : 1));
  for (int64_t i = 0; i < n; i++) half[i] = km_bf16(src[i]);
  be->upload(be, b->offset, half, n * (int64_t)sizeof(uint16_t));
  free(half);
  return true;
}

const Program *runtime_program(Runtime *rt) { return rt->r.p; }

void runtime_free(Runtime *rt) {
  if (!rt) return;
  overlap_close(&rt->r); /* the communication thread first: it uses the rest */
  if (rt->r.be) comm_close(&rt->r);
  if (rt->r.be && rt->r.be != rt->r.o->backend) rt->r.be->close(rt->r.be);
  if (rt->r.ck_lock) close(rt->r.ck_lock - 1);
  free(rt->r.trace);
  if (rt->r.own_net) rt->r.own_net->close(rt->r.own_net);
  free(rt);
}

/* Bytes this rank holds for the run: the arena, the backend's scratch and
   the communication staging (the largest over ranks). */
static double peak_bytes(Run *R) {
  double b = (double)R->p->arena_bytes + (double)R->be->extra_bytes(R->be) + (double)R->pad_cap;
  return R->net->world > 1 ? R->net->max(R->net, b) : b;
}

int runtime_run(const Program *p, const RunOptions *o) {
  FILE *out = o->out ? o->out : stdout;
  Runtime *rt = runtime_new(p, o);
  if (!rt) return 1;
  Run *R = &rt->r;
  Transport *net = R->net;
  bool many = net->world > 1, speak = !o->quiet && net->rank == 0;
  int rc = 0;
  RunTotals tot = {
      .precision = precision_describe(p->precision, false), .backend = R->be->describe, .overlap = R->ov != NULL};
  int first = R->step + 1; /* after a checkpoint's step when resuming */
  if (first > o->steps && o->steps > 0 && speak)
    printf("the run is already at step %d of %d: nothing to do\n", R->step, o->steps);
  for (int s = first; s <= o->steps && rc == 0; s++) {
    bool traced = o->trace && s == o->steps;
    if (traced) { /* one start for every rank's track */
      R->trace = xcalloc(2 * (size_t)p->nstep + 2, sizeof(double));
      net->agree(net, true);
    }
    double loss, t0 = now_seconds(), c0 = R->comm_s, e0 = R->exposed_s;
    rc = runtime_step(rt, &loss);
    double dt = now_seconds() - t0, dc = R->comm_s - c0, de = R->exposed_s - e0;
    if (rc && many) R->comm->abort(R->comm, 1); /* the other ranks may be waiting on this one */
    if (rc) break;
    if (traced && !trace_write(R, t0, o->trace)) rc = 1;
    if (many) { /* the step ends when its slowest rank does */
      snprintf(net->doing, sizeof net->doing, "end of step %d (the step time over the ranks)", s);
      dt = net->max(net, dt), dc = net->max(net, dc), de = net->max(net, de);
      net->doing[0] = 0;
    }
    if (s > first || first == o->steps) tot.step_s += dt, tot.comm_s += dc, tot.exposed_s += de, tot.timed++;
    if (!isfinite(loss)) {
      if (net->rank == 0)
        fprintf(stderr, "carve: error: step %d: the loss is %g; training diverged (try a lower --lr)\n", s, loss);
      rc = 1;
      break;
    }
    if (o->losses) o->losses[s - 1] = loss;
    if (speak && (s == first || s == o->steps || (o->log_every > 0 && s % o->log_every == 0)))
      report_step(p, s, loss, dt, out);
    if (o->checkpoint_dir && ((o->checkpoint_every > 0 && s % o->checkpoint_every == 0) || s == o->steps) &&
        !checkpoint_write(R, s))
      rc = 1;
  }
  tot.peak_bytes = peak_bytes(R);
  if (rc == 0 && speak && o->steps >= first) report_done(p, &tot, o->steps - first + 1, out);
  if (rc == 0 && o->step_s && tot.timed) *o->step_s = tot.step_s / tot.timed;
  if (rc == 0 && o->peak_bytes) *o->peak_bytes = tot.peak_bytes;
  if (rc == 0 && o->save_params && !runtime_save_params(rt, arena_printf("%s.rank%d", o->save_params, p->rank), stderr))
    rc = 1;
  if (o->profile) report_profile(R, out);
  runtime_free(rt);
  return rc;
}
