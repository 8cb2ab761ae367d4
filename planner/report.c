/* report.c: a plan as a readable report (`carve plan`) and as JSON
 * (`carve plan --json`, documented in docs/plan-format.md). */
#include <string.h>

#include "planner.h"

/* A collective's group: its mesh axes ("-": none), and "+Nst" for a tied
   parameter's copies on N stages. */
static const char *axes_str(const Comm *c, char *buf, size_t n) {
  const char *a = c->axes == 1 ? "0" : c->axes == 2 ? "1" : c->axes == 3 ? "0,1" : "-";
  if (c->copies > 1)
    snprintf(buf, n, "%s+%dst", c->axes ? a : "", c->copies);
  else
    snprintf(buf, n, "%s", a);
  return buf;
}

double plan_sync_s(const Plan *p) {
  double t = 0;
  for (int i = 0; i < p->ncomms; i++) {
    const Comm *c = &p->comms[i];
    if (c->once) t += c->count * comm_time(&p->mesh, c, NULL);
  }
  return t;
}

double plan_once_weight(const PlanOptions *o) {
  double n = o->step_mbs > 0 ? o->step_mbs : o->microbatches;
  return n > 1 ? 1 / n : 1;
}

void plan_comm_bytes(const Plan *p, int microbatches, double out[COLL_KINDS]) {
  for (int k = 0; k < COLL_KINDS; k++) out[k] = 0;
  for (int i = 0; i < p->ncomms; i++) {
    const Comm *c = &p->comms[i];
    out[c->kind] += c->bytes * c->count * (c->once ? 1 : microbatches);
  }
}

static void json_comm_bytes(FILE *out, const double b[COLL_KINDS]) {
  fprintf(out, "{");
  for (int k = 0; k < COLL_KINDS; k++) fprintf(out, "%s\"%s\": %.0f", k ? ", " : "", coll_names[k], b[k]);
  fprintf(out, "}");
}

static double total_memory(const Plan *p) { return p->mem_params + p->mem_grads + p->mem_optim + p->mem_acts; }

/* Parameters of the first two layers and outside layers; later layers
 * repeat them by parity. */
static bool shown(const Node *n) { return n->layer <= 1; }

void plan_report(const Plan *p, FILE *out) {
  const Graph *g = p->g;
  const Mesh *m = &p->mesh;
  char a[32], b[32], c[64], d[32], e[32], f[32], h[32];
  fprintf(out, "plan for %s on %s: a %dx%d mesh of %s\n", g->model, p->cluster->name, m->n[0], m->n[1],
          p->cluster->device ? p->cluster->device : "devices");
  for (int x = 0; x < 2; x++)
    fprintf(out, "  mesh axis %d: %d devices, %s, %s/s, %.1f us\n", x, m->n[x],
            m->inter[x] ? "across nodes" : "inside a node", fmt_bytes(m->bw[x], a, sizeof a), m->lat[x] * 1e6);
  fprintf(out, "  precision %s, ZeRO stage %d%s\n", precision_describe(p->opt.mixed ? PREC_BF16 : PREC_FP32, true),
          p->zero, p->opt.zero < 0 ? " (the lowest that fits)" : "");
  fprintf(out, "\npredicted step   %.4g s = compute %.4g s + communication %.4g s (no overlap assumed)\n",
          p->compute_s + p->comm_s, p->compute_s, p->comm_s);
  fprintf(out, "memory per device %s of %s (%.0f%%): parameters %s, gradients %s, optimizer %s, activations %s\n",
          fmt_bytes(total_memory(p), a, sizeof a), fmt_bytes(m->memory, b, sizeof b), 100 * total_memory(p) / m->memory,
          fmt_bytes(p->mem_params, d, sizeof d), fmt_bytes(p->mem_grads, e, sizeof e),
          fmt_bytes(p->mem_optim, f, sizeof f), fmt_bytes(p->mem_acts, h, sizeof h));
  int layers = 0;
  for (int i = 0; i < g->nfwd; i++)
    if (g->nodes[i]->layer + 1 > layers) layers = g->nodes[i]->layer + 1;
  fprintf(out, "\nparameters%s\n",
          layers > 2
              ? arena_printf(" (layers 0 and 1 shown; layers 2-%d repeat them: even like 0, odd like 1)", layers - 1)
              : "");
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    if (n->op != OP_PARAM || !shown(n)) continue;
    fprintf(out, "  %-28s %-20s %s\n", n->name, shape_str(&n->shape), spec_str(&p->layout[i], c, sizeof c));
  }
  fprintf(out, "\nactivations (einsum outputs%s)\n", layers > 2 ? ", layers 0 and 1" : "");
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    if (n->op != OP_EINSUM || !shown(n)) continue;
    fprintf(out, "  %-28s %-20s %s\n", n->name, shape_str(&n->shape), spec_str(&p->layout[i], c, sizeof c));
  }
  fprintf(out, "\ncollectives per step\n  %-15s %-5s %-9s %12s %6s  %s\n", "kind", "axes", "phase", "bytes", "count",
          "tensor");
  for (int i = 0; i < p->ncomms; i++) {
    const Comm *k = &p->comms[i];
    fprintf(out, "  %-15s %-5s %-9s %12.0f %6d  %s\n", coll_names[k->kind], axes_str(k, a, sizeof a),
            phase_names[k->phase], k->bytes, k->count, k->what ? k->what : "");
  }
  if (!p->ncomms) fprintf(out, "  none\n");
  fprintf(out,
          "\nsolver: %d groups of ops (repeated layers share one), %d binary and %d continuous variables, "
          "%d constraints, %.3f s, objective %.6g s, %s\n",
          p->groups, p->binaries, p->vars - p->binaries, p->constraints, p->solve_s, p->objective,
          p->optimal ? "optimal" : arena_printf("stopped at the time limit, gap %.2g%%", 100 * p->gap));
}

bool plan_lists_tensor(const Plan *p, int i) {
  const Node *n = p->g->nodes[i];
  return p->layout[i].rank == n->shape.rank &&
         (n->op == OP_PARAM || n->op == OP_INPUT || n->op == OP_EINSUM || n->op == OP_EMBED || n->op == OP_SOFTMAX ||
          n->op == OP_LAYERNORM || n->op == OP_RMSNORM || n->op == OP_MOE_DISPATCH || n->op == OP_MOE_COMBINE);
}

/* A plan's collectives as a JSON array, an entry a line indented by
   `indent`; one of every microbatch counts `microbatches` times per step. */
void plan_comms_json(const Plan *p, int microbatches, int indent, FILE *out) {
  fprintf(out, "[");
  for (int i = 0; i < p->ncomms; i++) {
    const Comm *k = &p->comms[i];
    fprintf(out,
            "%s\n%*s{\"kind\": \"%s\", \"mesh_axes\": [%s], %s\"bytes\": %.0f, \"count_per_step\": %d, "
            "\"phase\": \"%s\", \"tensor\": ",
            i ? "," : "", indent, "", coll_names[k->kind],
            k->axes == 1   ? "0"
            : k->axes == 2 ? "1"
            : k->axes == 3 ? "0, 1"
                           : "",
            k->copies > 1 ? arena_printf("\"stage_copies\": %d, ", k->copies) : "", k->bytes,
            k->count * (k->once ? 1 : microbatches), phase_names[k->phase]);
    json_write_str(out, k->what ? k->what : "");
    fprintf(out, "}");
  }
  if (p->ncomms) fprintf(out, "\n%*s", indent - 2, "");
  fprintf(out, "]");
}

void plan_json(const Plan *p, FILE *out) {
  const Graph *g = p->g;
  const Mesh *m = &p->mesh;
  fprintf(out, "{\n  \"format\": \"carve-plan\",\n  \"version\": 1,\n  \"model\": ");
  json_write_str(out, g->model);
  fprintf(out, ",\n  \"cluster\": ");
  json_write_str(out, p->cluster->name);
  fprintf(out, ",\n  \"mesh\": [%d, %d],\n  \"mesh_axes\": [", m->n[0], m->n[1]);
  for (int x = 0; x < 2; x++)
    fprintf(out, "%s{\"devices\": %d, \"bandwidth_bytes_per_s\": %.6g, \"latency_s\": %.6g, \"across_nodes\": %s}",
            x ? ", " : "", m->n[x], m->bw[x], m->lat[x], m->inter[x] ? "true" : "false");
  fprintf(out, "],\n  \"precision\": \"%s\",\n  \"zero_stage\": %d,\n", p->opt.mixed ? "bf16" : "fp32", p->zero);
  fprintf(
      out,
      "  \"objective\": %.9g,\n  \"predicted_step_s\": %.9g,\n  \"compute_s\": %.9g,\n  \"communication_s\": %.9g,\n",
      p->objective, p->compute_s + p->comm_s, p->compute_s, p->comm_s);
  fprintf(
      out,
      "  \"memory_per_device_bytes\": %.0f,\n  \"memory_by_kind_bytes\": {\"parameters\": %.0f, \"gradients\": %.0f, "
      "\"optimizer\": %.0f, \"activations\": %.0f},\n  \"device_memory_bytes\": %.0f,\n",
      p->mem_params + p->mem_grads + p->mem_optim + p->mem_acts, p->mem_params, p->mem_grads, p->mem_optim, p->mem_acts,
      m->memory);
  double cb[COLL_KINDS];
  plan_comm_bytes(p, 1, cb);
  fprintf(out, "  \"communication_bytes_per_device\": ");
  json_comm_bytes(out, cb);
  fprintf(out, ",\n  \"tensors\": {");
  bool first = true;
  for (int i = 0; i < g->nfwd; i++) {
    const Node *n = g->nodes[i];
    if (!plan_lists_tensor(p, i)) continue;
    fprintf(out, "%s\n    ", first ? "" : ",");
    first = false;
    json_write_str(out, n->name);
    fprintf(out, ": {\"kind\": \"%s\", \"shape\": [",
            n->op == OP_PARAM   ? "parameter"
            : n->op == OP_INPUT ? "input"
                                : "activation");
    for (int d = 0; d < n->shape.rank; d++) fprintf(out, "%s%lld", d ? ", " : "", (long long)n->shape.d[d]);
    fprintf(out, "], \"sharding\": [");
    for (int d = 0; d < n->shape.rank; d++) fprintf(out, "%s\"%s\"", d ? ", " : "", spec_dim_str(p->layout[i].d[d]));
    fprintf(out, "]}");
  }
  fprintf(out, "\n  },\n  \"collectives\": ");
  plan_comms_json(p, 1, 4, out);
  fprintf(out,
          ",\n  \"solver\": {\"groups\": %d, \"binary_variables\": %d, \"variables\": %d, \"constraints\": %d, "
          "\"seconds\": %.6f, \"optimal\": %s, \"gap\": %.6g}\n}\n",
          p->groups, p->binaries, p->vars, p->constraints, p->solve_s, p->optimal ? "true" : "false", p->gap);
}
