/* md_plan.c - multi-device layout plan (pure: a description in, a plan out). */
#include "shim_internal.h"

static int net_kind(const char *name) {
  if (!strcmp(name, "embedding") || !strcmp(name, "embedding_cache")) return TPC_NET_EMBEDDING;
  if (!strcmp(name, "lm_head")) return TPC_NET_LM_HEAD;
  if (!strncmp(name, "block_cache_", 12)) return TPC_NET_BLOCK_CACHE;
  if (!strncmp(name, "block_kv_", 9)) return TPC_NET_BLOCK_KV;
  if (!strncmp(name, "block_", 6)) return TPC_NET_BLOCK;
  return TPC_NET_OTHER;
}

static const char *role_name(int r) {
  static const char *const names[TPC_NUM_ROLES] = {"passthrough", "input_ids", "hidden states", "position_ids",
                                                   "attention_mask", "history_k", "history_v", "K rows",
                                                   "V rows"};
  return r >= 0 && r < TPC_NUM_ROLES ? names[r] : "?";
}

/* The role an input's name announces (the converter's names), or -1. */
static int input_role_by_name(const char *n) {
  if (!n) return -1;
  if (!strcmp(n, "input_ids")) return TPC_ROLE_IDS;
  if (!strcmp(n, "input_states") || !strcmp(n, "hidden_states")) return TPC_ROLE_HIDDEN;
  if (!strcmp(n, "position_ids")) return TPC_ROLE_POS;
  if (!strcmp(n, "attention_mask")) return TPC_ROLE_MASK;
  if (!strncmp(n, "history_k", 9)) return TPC_ROLE_HIST_K;
  if (!strncmp(n, "history_v", 9)) return TPC_ROLE_HIST_V;
  return -1;
}

/* Inputs in the order a net of this kind takes them (older converters'
 * names differ; then position within the device's inputs decides). */
static int kind_input_roles(int kind, int has_mask, int *roles) {
  int n = 0;
  switch (kind) {
    case TPC_NET_EMBEDDING: roles[n++] = TPC_ROLE_IDS; break;
    case TPC_NET_LM_HEAD: roles[n++] = TPC_ROLE_HIDDEN; break;
    case TPC_NET_BLOCK:
      roles[n++] = TPC_ROLE_HIDDEN; roles[n++] = TPC_ROLE_POS;
      if (has_mask) roles[n++] = TPC_ROLE_MASK;
      break;
    case TPC_NET_BLOCK_CACHE:
      roles[n++] = TPC_ROLE_HIDDEN; roles[n++] = TPC_ROLE_POS; roles[n++] = TPC_ROLE_MASK;
      roles[n++] = TPC_ROLE_HIST_K; roles[n++] = TPC_ROLE_HIST_V;
      break;
    case TPC_NET_BLOCK_KV:
      roles[n++] = TPC_ROLE_HIDDEN; roles[n++] = TPC_ROLE_POS;
      roles[n++] = TPC_ROLE_HIST_K; roles[n++] = TPC_ROLE_HIST_V;
      break;
    default: break;
  }
  return n;
}

static int same_shape(const tpc_tensor_info *a, const tpc_tensor_info *b) {
  if (a->dtype != b->dtype || a->num_dims != b->num_dims) return 0;
  for (int i = 0; i < a->num_dims && i < 8; i++)
    if (a->dims[i] != b->dims[i]) return 0;
  return 1;
}

#define PLAN_FAIL(...) do { set_err(err, errlen, __VA_ARGS__); return TPC_E_MODEL; } while (0)

static int plan_devices(const tpc_net_desc *net, int num_device, tpc_net_plan *p, char *err, int errlen) {
  const tpc_tensor_info *in = net->inputs, *out = net->outputs;
  for (int i = 0; i < net->num_inputs; i++) {
    p->in_tie[i] = -1;
    p->in_device[i] = in[i].device;
    if (in[i].device < 0 || in[i].device >= num_device)
      PLAN_FAIL("net %s: input %d (%s) lives on device %d, but the bmodel is for %d device%s", net->name, i,
                in[i].name ? in[i].name : "?", in[i].device, num_device, num_device == 1 ? "" : "s");
  }
  for (int i = 0; i < net->num_outputs; i++) {
    p->out_device[i] = out[i].device;
    if (out[i].device < 0 || out[i].device >= num_device)
      PLAN_FAIL("net %s: output %d (%s) lives on device %d, but the bmodel is for %d device%s", net->name, i,
                out[i].name ? out[i].name : "?", out[i].device, num_device, num_device == 1 ? "" : "s");
  }
  return TPC_OK;
}

/* Inputs, device by device: by name, else by position. */
static int plan_inputs(const tpc_net_desc *net, int num_device, tpc_net_plan *p, char *err, int errlen) {
  const tpc_tensor_info *in = net->inputs;
  int has_mask = 0;
  for (int i = 0; i < net->num_inputs; i++)
    if (input_role_by_name(in[i].name) == TPC_ROLE_MASK) has_mask = 1;
  for (int d = 0; d < num_device; d++) {
    int named = 0, count = 0;
    for (int i = 0; i < net->num_inputs; i++) {
      if (in[i].device != d) continue;
      count++;
      int r = input_role_by_name(in[i].name);
      if (r < 0 || p->role_input[r][d] >= 0) continue;
      p->in_role[i] = r;
      p->role_input[r][d] = i;
      named++;
    }
    if (named == 0 && count > 0) {
      int roles[8], nr = kind_input_roles(p->kind, 1, roles), k = 0;
      if (p->kind == TPC_NET_BLOCK && count < 3) nr = kind_input_roles(p->kind, 0, roles);
      for (int i = 0; i < net->num_inputs && k < nr; i++) {
        if (in[i].device != d) continue;
        p->in_role[i] = roles[k];
        p->role_input[roles[k]][d] = i;
        k++;
      }
    }
  }
  int need[8], nneed = kind_input_roles(p->kind, has_mask, need);
  for (int d = 0; d < num_device; d++)
    for (int k = 0; k < nneed; k++)
      if (p->role_input[need[k]][d] < 0)
        PLAN_FAIL("net %s has no %s input on device %d", net->name, role_name(need[k]), d);
  return TPC_OK;
}

static int is_blocky(int kind) {
  return kind == TPC_NET_BLOCK || kind == TPC_NET_BLOCK_CACHE || kind == TPC_NET_BLOCK_KV;
}

/* The role of output i of device d: the hidden output (or lm_head's
 * result) comes first, then the new K and V rows; anything else passes
 * through. */
static int output_role(const tpc_net_plan *p, const tpc_tensor_info *o, int d) {
  int blocky = is_blocky(p->kind);
  const char *n = o->name ? o->name : "";
  int kv_like = blocky && o->num_dims == 4;
  int has_k = p->role_output[TPC_ROLE_K][d] >= 0, has_v = p->role_output[TPC_ROLE_V][d] >= 0;
  if (blocky && !strncmp(n, "k_cache", 7) && !has_k) return TPC_ROLE_K;
  if (blocky && !strncmp(n, "v_cache", 7) && !has_v) return TPC_ROLE_V;
  if (p->kind != TPC_NET_OTHER && !kv_like && !has_k && !has_v && p->role_output[TPC_ROLE_HIDDEN][d] < 0)
    return TPC_ROLE_HIDDEN;
  if (kv_like && !has_k) return TPC_ROLE_K;
  if (kv_like && !has_v) return TPC_ROLE_V;
  return TPC_ROLE_NONE;
}

static int plan_outputs(const tpc_net_desc *net, int num_device, tpc_net_plan *p, char *err, int errlen) {
  for (int d = 0; d < num_device; d++) {
    for (int i = 0; i < net->num_outputs; i++) {
      if (net->outputs[i].device != d) continue;
      int r = output_role(p, &net->outputs[i], d);
      p->out_role[i] = r;
      if (r != TPC_ROLE_NONE) p->role_output[r][d] = i;
    }
    if (p->role_output[TPC_ROLE_HIDDEN][d] >= 0) p->hidden_out_devices |= 1 << d;
    if (is_blocky(p->kind) && (p->role_output[TPC_ROLE_K][d] < 0 || p->role_output[TPC_ROLE_V][d] < 0))
      PLAN_FAIL("net %s has no new K/V output on device %d", net->name, d);
  }
  if (p->kind != TPC_NET_OTHER && !p->hidden_out_devices)
    PLAN_FAIL("net %s has no %s output on any device", net->name,
              p->kind == TPC_NET_LM_HEAD ? "token/logits" : "hidden states");
  return TPC_OK;
}

/* Each device's share of the KV cache (history inputs of decode nets, new
 * rows of prefill nets): equal shapes, heads add up. */
static int plan_kv_shares(const tpc_net_desc *net, int num_device, tpc_net_plan *p, char *err, int errlen) {
  int hist = p->kind == TPC_NET_BLOCK_CACHE || p->kind == TPC_NET_BLOCK_KV;
  if (!hist && p->kind != TPC_NET_BLOCK) return TPC_OK;
  const tpc_tensor_info *t = hist ? net->inputs : net->outputs;
  int rk = hist ? TPC_ROLE_HIST_K : TPC_ROLE_K, rv = hist ? TPC_ROLE_HIST_V : TPC_ROLE_V;
  int (*where)[TPC_MAX_DEV] = hist ? p->role_input : p->role_output;
  const tpc_tensor_info *k0 = &t[where[rk][0]];
  p->kv_heads = k0->num_dims >= 4 ? k0->dims[2] : 1;
  for (int d = 0; d < num_device; d++) {
    if (!same_shape(&t[where[rk][d]], k0) || !same_shape(&t[where[rv][d]], k0))
      PLAN_FAIL("net %s: the %s of device %d differs in shape from device 0's", net->name,
                hist ? "KV history" : "new K/V rows", d);
    p->kv_heads_total += p->kv_heads;
  }
  return TPC_OK;
}

/* Passthrough inputs: fed by the same device's first unused passthrough
 * output of equal shape (the compiler's cross-device reduction result),
 * else they keep the runtime's own buffer. */
static void plan_ties(const tpc_net_desc *net, tpc_net_plan *p) {
  int used[TPC_MAX_IO] = {0};
  const tpc_tensor_info *in = net->inputs, *out = net->outputs;
  for (int i = 0; i < net->num_inputs; i++) {
    if (p->in_role[i] != TPC_ROLE_NONE) continue;
    p->num_passthrough_in++;
    for (int o = 0; o < net->num_outputs; o++) {
      if (used[o] || p->out_role[o] != TPC_ROLE_NONE || out[o].device != in[i].device) continue;
      if (!same_shape(&out[o], &in[i])) continue;
      used[o] = 1;
      p->in_tie[i] = o;
      p->num_tied++;
      break;
    }
  }
}

int tpc_plan_net(const tpc_net_desc *net, int num_device, tpc_net_plan *p, char *err, int errlen) {
  if (!net || !p || !net->name || num_device < 1 || num_device > TPC_MAX_DEV || net->num_inputs < 0 ||
      net->num_outputs < 0 || (net->num_inputs && !net->inputs) || (net->num_outputs && !net->outputs)) {
    set_err(err, errlen, "bad arguments to the layout planner");
    return TPC_E_ARG;
  }
  if (net->num_inputs > TPC_MAX_IO || net->num_outputs > TPC_MAX_IO)
    PLAN_FAIL("net %s has %d inputs and %d outputs; at most %d are supported", net->name, net->num_inputs,
              net->num_outputs, TPC_MAX_IO);
  memset(p, 0, sizeof *p);
  memset(p->role_input, -1, sizeof p->role_input);
  memset(p->role_output, -1, sizeof p->role_output);
  p->kind = net_kind(net->name);
  p->num_device = num_device;
  p->num_inputs = net->num_inputs;
  p->num_outputs = net->num_outputs;
  int rc;
  if ((rc = plan_devices(net, num_device, p, err, errlen)) || (rc = plan_inputs(net, num_device, p, err, errlen)) ||
      (rc = plan_outputs(net, num_device, p, err, errlen)) || (rc = plan_kv_shares(net, num_device, p, err, errlen)))
    return rc;
  plan_ties(net, p);
  return TPC_OK;
}
