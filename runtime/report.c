/* report.c: what a run tells about itself besides its step lines: time by
 * instruction kind (--profile) and a Chrome/Perfetto trace of the last step,
 * one track per rank (--trace), gathered to rank 0 through the transport. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

void report_step(const Program *p, int s, double loss, double dt, FILE *out) {
  fprintf(out, "step %5d  loss %.6f  %7.1f ms", s, loss, dt * 1e3);
  if (p->tokens_per_step) fprintf(out, "  %9.0f tok/s", (double)p->tokens_per_step / dt);
  fprintf(out, "  %7.2f GFLOP/s%s\n", p->flops_per_step / p->world / dt * 1e-9, p->world > 1 ? " per rank" : "");
  fflush(out);
}

void report_done(const Program *p, const RunTotals *t, int steps, FILE *out) {
  char b1[32], b2[32];
  bool many = p->world > 1;
  int timed = t->timed ? t->timed : 1;
  double per = t->step_s / timed;
  fprintf(out, "done: %d steps", steps);
  if (many) fprintf(out, " on %d ranks", p->world);
  fprintf(out, ", %.1f ms/step (after the first)", per * 1e3);
  if (p->tokens_per_step) fprintf(out, ", %s tok/s", fmt_si((double)p->tokens_per_step / per, b1, sizeof b1));
  fprintf(out, ", %s FLOP/s%s (einsum FLOPs), ", fmt_si(p->flops_per_step / p->world / per, b2, sizeof b2),
          many ? " per rank" : "");
  fprintf(out, "peak memory%s %s\n", many ? " per rank" : "", fmt_bytes(t->peak_bytes, b1, sizeof b1));
  fprintf(out, "precision: %s, on %s\n", t->precision, t->backend);
  if (!many) return;
  fprintf(out, "communication: %.1f ms/step on the busiest rank (%.0f%%)", t->comm_s / timed * 1e3,
          100 * t->comm_s / (t->step_s > 0 ? t->step_s : 1));
  if (t->overlap)
    fprintf(out, ", overlapped with compute but for %.1f ms/step (the most a rank waited)", t->exposed_s / timed * 1e3);
  else
    fprintf(out, ", none of it overlapped");
  fprintf(out, "\n");
}

/* Time by opcode, largest first. */
void report_profile(const Run *R, FILE *out) {
  double total = 0;
  for (int op = 0; op < OP_COUNT; op++) total += R->op_time[op];
  fprintf(out, "time by instruction (all steps, including the first):\n");
  bool done[OP_COUNT] = {0};
  for (;;) {
    int best = -1;
    for (int op = 0; op < OP_COUNT; op++)
      if (!done[op] && R->op_count[op] && (best < 0 || R->op_time[op] > R->op_time[best])) best = op;
    if (best < 0) break;
    done[best] = true;
    fprintf(out, "  %-18s %9.1f ms %5.1f%%  %8lld calls\n", op_info[best].name, R->op_time[best] * 1e3,
            100 * R->op_time[best] / (total > 0 ? total : 1), (long long)R->op_count[best]);
  }
}

static bool is_comm(OpKind op) { /* moves data between ranks (a shard or a cut does not) */
  return (op_info[op].flags & OPF_COMM) && op != OP_SHARD && op != OP_SPLIT_DIM;
}

/* The traced step as Chrome trace events, one track per rank: compute and
   communication instructions by name; the gaps are where the rank waited. */
static char *trace_events(const Run *R, double t0, size_t *len) {
  char *text = NULL;
  FILE *f = open_memstream(&text, len);
  const Program *p = R->p;
  fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":%d,\"args\":{\"name\":\"rank %d\"}}", p->rank,
          p->rank);
  for (int i = 0; i < p->nstep; i++) {
    const Instr *in = &p->step[i];
    int b = in->out >= 0 ? in->out : in->in[0];
    fprintf(f,
            ",\n{\"name\":\"%s %s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":0,\"tid\":%d,\"ts\":%.3f,"
            "\"dur\":%.3f}",
            op_info[in->op].name, p->bufs[b].name, is_comm(in->op) ? "communication" : "compute", p->rank,
            (R->trace[2 * i] - t0) * 1e6, (R->trace[2 * i + 1] - R->trace[2 * i]) * 1e6);
  }
  fclose(f);
  return text;
}

/* Every rank's events to rank 0, which writes the file. */
bool trace_write(Run *R, double t0, const char *path) {
  Transport *t = R->net;
  size_t len = 0;
  char *mine = trace_events(R, t0, &len);
  int64_t block = (int64_t)t->max(t, (double)len) + 1;
  char *in = xcalloc((size_t)block, 1), *all = xmalloc((size_t)(block * t->world));
  memcpy(in, mine, len);
  bool ok = t->gather_all(t, in, block, all);
  if (ok && t->rank == 0) {
    const char *tmp;
    FILE *f = temp_beside(path, &tmp);
    if (f) {
      fprintf(f, "{\"traceEvents\":[\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":0,\"args\":{\"name\":"
                 "\"ranks (one step)\"}}");
      for (int r = 0; r < t->world; r++) fputs(all + (size_t)r * (size_t)block, f);
      fprintf(f, "\n],\"displayTimeUnit\":\"ms\"}\n");
    }
    ok = temp_close(f, tmp, path, true);
    if (!ok) fprintf(stderr, "carve: error: cannot write the trace '%s': %s\n", path, strerror(errno));
  }
  free(mine);
  free(in);
  free(all);
  return ok;
}
