/* roles.c - the table of bmodel conventions and the matcher that finds which
 * net plays which role (by the nets' names AND their input/output counts,
 * shapes and dtypes).  Pure: descriptions in, roles out; the shim calls it
 * on the runtime's descriptions, tests call it on synthetic ones. */
#include "shim_internal.h"

/* One known way of cutting an LLM into nets. */
typedef struct {
  int id;
  const char *name;
  const char *embed, *embed_cache;  /* embed_cache NULL: decode tokens go through embed */
  const char *block_fmt, *cache_fmt, *lm_head;
  const char *marker;               /* a net only this convention has (NULL: none) */
  int embed_inputs;                 /* input_ids (+ input_pos for learned positions) */
  int cache_inputs;                 /* decode layer inputs */
  int kv_layout;                    /* TPC_KV_* */
  float mask_value;                 /* 0: -10000 */
  const char *refuse;               /* recognised but not run: why */
} convention;

static const convention CONVENTIONS[] = {
    {TPC_CONV_SHARE_CACHE, "LLM-TPU share-cache", "embedding", "embedding_cache", "block_%d", "block_cache_%d",
     "lm_head", "block_unshare_0", 1, 5, TPC_KV_ROWS, 0, NULL}, /* run by share.c */
    {TPC_CONV_LLM_CONVERT, "llm_convert", "embedding", "embedding_cache", "block_%d", "block_cache_%d", "lm_head",
     NULL, 1, 5, TPC_KV_ROWS, 0, NULL},
    {TPC_CONV_QWEN_TPU, "Qwen-TPU (qwen_block, 2-stage embedding)", "embedding", NULL, "qwen_block_%d",
     "qwen_block_cache_%d", "lm_head", NULL, 1, 5, TPC_KV_ROWS, 0, NULL},
    /* LLM-TPU models/WizardCoder: GPT-BigCode with learned positions (the
     * embedding takes input_pos), K|V of its one multi-query head side by
     * side in one past_cache, masks of -1000 (its export's value). */
    {TPC_CONV_WIZARDCODER, "WizardCoder (GPT-BigCode, sliding past_cache)", "embedding", NULL, "block_%d",
     "block_cache_%d", "lm_head", NULL, 2, 3, TPC_KV_SLIDING, -1000.0f, NULL},
};
#define NUM_CONVENTIONS ((int)(sizeof CONVENTIONS / sizeof CONVENTIONS[0]))

static int net_index(const tpc_net_summary *nets, int n, const char *name) {
  for (int i = 0; name && i < n; i++)
    if (nets[i].io.name && !strcmp(nets[i].io.name, name)) return i;
  return -1;
}

static int layer_index(const tpc_net_summary *nets, int n, const char *fmt, int layer) {
  char name[64];
  snprintf(name, sizeof name, fmt, layer);
  return net_index(nets, n, name);
}

static int is_float(int dt) { return dt == BMAPI_F16 || dt == BMAPI_BF16 || dt == BMAPI_F32; }

/* Devices the net spans (the largest device index of its inputs + 1). */
static int net_devices(const tpc_net_summary *s) {
  int n = 1;
  for (int i = 0; i < s->io.num_inputs; i++)
    if (s->io.inputs[i].device + 1 > n) n = s->io.inputs[i].device + 1;
  return n;
}

/* Problems are appended to `why` as "role (detail)"; returns 1 when fine. */
static int problem(char *why, size_t len, const char *role, const char *fmt, ...) {
  size_t used = strlen(why);
  if (used + 8 >= len) return 0;
  used += (size_t)snprintf(why + used, len - used, "%s%s (", used ? ", " : "", role);
  if (used >= len) return 0;
  va_list ap;
  va_start(ap, fmt);
  used += (size_t)vsnprintf(why + used, len - used, fmt, ap);
  va_end(ap);
  if (used + 2 < len) strcat(why, ")");
  return 0;
}

static int check_embed(const convention *c, const tpc_net_summary *e, int md, char *why, size_t len) {
  const tpc_net_desc *d = &e->io;
  int want = c->embed_inputs;
  if (md ? d->num_inputs < want : d->num_inputs != want)
    return problem(why, len, "embedding", "%s has %d inputs, want %d", d->name, d->num_inputs, want);
  if (d->num_outputs < 1 || d->inputs[0].dtype != BMAPI_INT32 || !is_float(d->outputs[0].dtype) ||
      d->outputs[0].num_dims != 3)
    return problem(why, len, "embedding", "%s does not map int32 ids to [1,S,hidden] states", d->name);
  if (want == 2 && !md && d->inputs[1].dtype != BMAPI_INT32)
    return problem(why, len, "embedding", "%s input 1 is not int32 positions", d->name);
  return 1;
}

static int check_embed_cache(const tpc_net_summary *e, int md, char *why, size_t len) {
  const tpc_net_desc *d = &e->io;
  if ((md ? d->num_inputs < 1 : d->num_inputs != 1) || d->inputs[0].dtype != BMAPI_INT32 || d->num_outputs < 1 ||
      !is_float(d->outputs[0].dtype))
    return problem(why, len, "decode embedding", "%s does not map one int32 id to a hidden state", d->name);
  return 1;
}

/* Layer 0's prefill net: hidden, then int32 positions (+ mask), or for
 * learned positions hidden + mask; new K/V rows out. */
static int check_block(const convention *c, const tpc_net_summary *b, int md, char *why, size_t len) {
  const tpc_net_desc *d = &b->io;
  int learned = c->embed_inputs == 2;
  int lo = 2, hi = learned ? 2 : 3;
  if (md ? d->num_inputs < lo : (d->num_inputs < lo || d->num_inputs > hi))
    return problem(why, len, "layer prefill", "%s has %d inputs, want %d..%d", d->name, d->num_inputs, lo, hi);
  if (md) return 1;
  if (!is_float(d->inputs[0].dtype) || d->inputs[0].num_dims != 3)
    return problem(why, len, "layer prefill", "%s input 0 is not [1,S,hidden] states", d->name);
  if (learned ? !is_float(d->inputs[1].dtype) : d->inputs[1].dtype != BMAPI_INT32)
    return problem(why, len, "layer prefill", "%s input 1 is not %s", d->name,
                   learned ? "a float mask" : "int32 position ids");
  if (d->num_outputs < (learned ? 2 : 3))
    return problem(why, len, "layer prefill", "%s has %d outputs, want hidden + K/V", d->name, d->num_outputs);
  return 1;
}

/* Layer 0's decode net: hidden, position, mask [.., L+1], history K and V
 * [1,L,..] (or WizardCoder's hidden, past_cache, mask). */
static int check_cache(const convention *c, const tpc_net_summary *b, int md, char *why, size_t len) {
  const tpc_net_desc *d = &b->io;
  if (md ? d->num_inputs < c->cache_inputs : d->num_inputs != c->cache_inputs)
    return problem(why, len, "layer decode", "%s has %d inputs, want %d", d->name, d->num_inputs, c->cache_inputs);
  if (md) return 1;
  const tpc_tensor_info *in = d->inputs;
  if (c->kv_layout == TPC_KV_SLIDING) {
    if (!is_float(in[0].dtype) || !is_float(in[1].dtype) || in[1].num_dims != 3 || !is_float(in[2].dtype) ||
        !in[2].num_dims || in[2].dims[in[2].num_dims - 1] != in[1].dims[1] + 1)
      return problem(why, len, "layer decode", "%s does not take hidden, past_cache [1,L,2*dim], mask [..,L+1]",
                     d->name);
    if (d->num_outputs < 2 || d->outputs[1].num_dims != 3 || d->outputs[1].dims[1] != in[1].dims[1] + 1 ||
        d->outputs[1].dims[2] != in[1].dims[2])
      return problem(why, len, "layer decode", "%s does not return hidden + the L+1-row cache", d->name);
    return 1;
  }
  if (!is_float(in[0].dtype) || in[1].dtype != BMAPI_INT32 || !is_float(in[2].dtype) || !is_float(in[3].dtype) ||
      in[3].num_dims < 3 || in[3].dtype != in[4].dtype || in[3].num_dims != in[4].num_dims)
    return problem(why, len, "layer decode", "%s does not take hidden, position, mask, history K, history V",
                   d->name);
  int mask_cols = in[2].num_dims ? in[2].dims[in[2].num_dims - 1] : 0;
  if (mask_cols != in[3].dims[1] + 1)
    return problem(why, len, "layer decode", "%s's mask has %d columns, want history %d + 1", d->name, mask_cols,
                   in[3].dims[1]);
  if (d->num_outputs < 3)
    return problem(why, len, "layer decode", "%s has %d outputs, want hidden + new K/V", d->name, d->num_outputs);
  return 1;
}

static int check_lm_head(const tpc_net_summary *h, int md, char *why, size_t len) {
  const tpc_net_desc *d = &h->io;
  if ((md ? d->num_inputs < 1 : d->num_inputs != 1) || !is_float(d->inputs[0].dtype) || d->num_outputs < 1 ||
      (d->outputs[0].dtype != BMAPI_INT32 && !is_float(d->outputs[0].dtype)))
    return problem(why, len, "lm_head", "%s does not map a hidden state to a token or logits", d->name);
  return 1;
}

/* Which stage of the embedding decode tokens go through.  TPU-MLIR 1.30.2's
 * runtime mis-runs a static multi-stage net whose stage 0 is the 1-row one
 * (zeros, or an assert on a second launch), so that stage is never used:
 * the token goes through the widest stage at row 0 instead, which is right
 * on every runtime. */
static void choose_decode_embed(const tpc_net_summary *e, tpc_roles *r) {
  int one = -1, widest = 0;
  for (int s = 0; s < e->num_stages && s < 8; s++) {
    if (e->stage_rows[s] == 1 && one < 0) one = s;
    if (e->stage_rows[s] > e->stage_rows[widest]) widest = s;
  }
  int faulty = one == 0 && e->num_stages > 1 && !e->is_dynamic;
  if (e->is_dynamic || (one >= 0 && !faulty)) {
    r->decode_embed = TPC_EMBED_DECODE_STAGE;
    r->decode_embed_stage = one >= 0 ? one : 0;
  } else {
    r->decode_embed = TPC_EMBED_DECODE_PREFILL;
    r->decode_embed_stage = widest;
  }
}

static int sample_role_by_name(const char *n) {
  if (!n) return -1;
  if (!strcmp(n, "m_logits") || !strcmp(n, "logits")) return TPC_SAMPLE_LOGITS;
  if (!strcmp(n, "input_ids")) return TPC_SAMPLE_IDS;
  if (!strcmp(n, "penalty") || !strcmp(n, "repetition_penalty")) return TPC_SAMPLE_PENALTY;
  if (!strcmp(n, "temperature")) return TPC_SAMPLE_TEMPERATURE;
  if (!strcmp(n, "top_k")) return TPC_SAMPLE_TOP_K;
  if (!strcmp(n, "top_p")) return TPC_SAMPLE_TOP_P;
  return -1;
}

static int scalar(const tpc_tensor_info *t, int want_int) {
  int count = 1;
  for (int i = 0; i < t->num_dims; i++) count *= t->dims[i];
  return count == 1 && (want_int ? t->dtype == BMAPI_INT32 : t->dtype == BMAPI_F32);
}

/* The sample head's inputs by name (llm_convert's sample_head: logits, ids,
 * penalty, temperature, top_k, top_p; sophon-demo's penalty_sample_head:
 * logits, ids, top_p, temperature, penalty with top_k 50 inside), by
 * position when the names are unknown.  A head whose inputs are not what
 * the shim writes is not used (the host samples instead). */
static int map_sample_head(const tpc_net_summary *h, int *in) {
  static const int six[6] = {0, 1, 2, 3, 4, 5}, five[6] = {0, 1, 4, 3, -1, 2};
  const tpc_net_desc *d = &h->io;
  int named = 0;
  for (int k = 0; k < 6; k++) in[k] = -1;
  for (int i = 0; i < d->num_inputs; i++) {
    int r = sample_role_by_name(d->inputs[i].name);
    if (r >= 0 && in[r] < 0) { in[r] = i; named++; }
  }
  if (!named && (d->num_inputs == 6 || d->num_inputs == 5))
    for (int k = 0; k < 6; k++) in[k] = d->num_inputs == 6 ? six[k] : five[k];
  if (in[TPC_SAMPLE_LOGITS] < 0 || in[TPC_SAMPLE_IDS] < 0 || in[TPC_SAMPLE_TEMPERATURE] < 0) return 0;
  if (!is_float(d->inputs[in[TPC_SAMPLE_LOGITS]].dtype) || d->inputs[in[TPC_SAMPLE_IDS]].dtype != BMAPI_INT32)
    return 0;
  for (int k = TPC_SAMPLE_PENALTY; k <= TPC_SAMPLE_TOP_P; k++)
    if (in[k] >= 0 && !scalar(&d->inputs[in[k]], k == TPC_SAMPLE_TOP_K)) return 0;
  return d->num_outputs >= 2;
}

static void find_heads(const tpc_net_summary *nets, int n, tpc_roles *r) {
  r->greedy_head = net_index(nets, n, "greedy_head");
  int s = net_index(nets, n, "sample_head");
  if (s < 0) s = net_index(nets, n, "penalty_sample_head");
  r->sample_head = s >= 0 && map_sample_head(&nets[s], r->sample_in) ? s : -1;
}

/* Does convention c fit?  Problems go to `why`. */
static int try_convention(const convention *c, const tpc_net_summary *nets, int n, tpc_roles *r, char *why,
                          size_t len) {
  why[0] = 0;
  if (c->marker && net_index(nets, n, c->marker) < 0) return problem(why, len, "marker", "no %s", c->marker);
  int e = net_index(nets, n, c->embed), ec = net_index(nets, n, c->embed_cache), lm = net_index(nets, n, c->lm_head);
  int b0 = layer_index(nets, n, c->block_fmt, 0), c0 = layer_index(nets, n, c->cache_fmt, 0);
  int md = e >= 0 && net_devices(&nets[e]) > 1, ok = 1;
  char name[64];
  if (e < 0) ok = problem(why, len, "embedding", "no net %s", c->embed);
  else ok &= check_embed(c, &nets[e], md, why, len);
  if (c->embed_cache && ec < 0) ok = problem(why, len, "decode embedding", "no net %s", c->embed_cache);
  else if (c->embed_cache) ok &= check_embed_cache(&nets[ec], md, why, len);
  snprintf(name, sizeof name, c->block_fmt, 0);
  if (b0 < 0) ok = problem(why, len, "layer prefill", "no net %s", name);
  else ok &= check_block(c, &nets[b0], md, why, len);
  snprintf(name, sizeof name, c->cache_fmt, 0);
  if (c0 < 0) ok = problem(why, len, "layer decode", "no net %s", name);
  else ok &= check_cache(c, &nets[c0], md, why, len);
  if (lm < 0) ok = problem(why, len, "lm_head", "no net %s", c->lm_head);
  else ok &= check_lm_head(&nets[lm], md, why, len);
  if (!ok) return 0;
  memset(r, 0, sizeof *r);
  r->convention = c->id;
  r->kv_layout = c->kv_layout;
  r->learned_positions = c->embed_inputs == 2;
  r->mask_value = c->mask_value;
  r->embedding = e;
  r->embedding_cache = ec;
  r->lm_head = lm;
  r->num_device = net_devices(&nets[e]);
  while (layer_index(nets, n, c->block_fmt, r->num_layers) >= 0) r->num_layers++;
  if (ec >= 0) r->decode_embed = TPC_EMBED_DECODE_NET;
  else choose_decode_embed(&nets[e], r);
  find_heads(nets, n, r);
  snprintf(r->name, sizeof r->name, "%s", c->name);
  if (c->id == TPC_CONV_LLM_CONVERT && r->sample_head >= 0 && nets[r->sample_head].io.num_inputs == 5)
    snprintf(r->name, sizeof r->name, "llm_convert names, 5-input penalty_sample_head (sophon-demo / LLM-TPU)");
  return 1;
}

static void list_nets(const tpc_net_summary *nets, int n, char *out, size_t len) {
  out[0] = 0;
  for (int i = 0; i < n && strlen(out) + 8 < len; i++) {
    strncat(out, i ? ", " : "", len - strlen(out) - 1);
    strncat(out, nets[i].io.name ? nets[i].io.name : "?", len - strlen(out) - 1);
  }
  if (strlen(out) + 8 >= len) strcpy(out + len - 6, ", ...");
}

int tpc_match_roles(const tpc_net_summary *nets, int num_nets, tpc_roles *out, char *err, int errlen) {
  if (!nets || num_nets < 0 || !out) {
    set_err(err, errlen, "bad arguments to the role matcher");
    return TPC_E_ARG;
  }
  char why[400], best_why[400] = "", list[400];
  int best = -1, best_fit = -1;
  for (int k = 0; k < NUM_CONVENTIONS; k++) {
    const convention *c = &CONVENTIONS[k];
    if (try_convention(c, nets, num_nets, out, why, sizeof why)) {
      if (!c->refuse) return TPC_OK;
      set_err(err, errlen, "%s", c->refuse);
      return TPC_E_MODEL;
    }
    if (c->marker && net_index(nets, num_nets, c->marker) < 0) continue; /* not even a candidate */
    /* closest: the most roles that fit (ties: the earlier, more common convention) */
    int roles = 4 + (c->embed_cache != NULL), bad = 0;
    for (const char *p = why; *p; p++) bad += *p == '(';
    if (roles - bad > best_fit) {
      best = k;
      best_fit = roles - bad;
      snprintf(best_why, sizeof best_why, "%s", why);
    }
  }
  memset(out, 0, sizeof *out);
  list_nets(nets, num_nets, list, sizeof list);
  set_err(err, errlen, "not an LLM bmodel tpuchat knows: closest is %s, which lacks %s; the bmodel has nets: %s",
          best >= 0 ? CONVENTIONS[best].name : "none", best_why, list);
  return TPC_E_MODEL;
}

int tpc_roles_of(const tpc_model *m, tpc_roles *out) {
  if (!m || !out) return TPC_E_ARG;
  *out = m->roles;
  return TPC_OK;
}

/* The names of a convention's layer nets, for the shim's lookups. */
const char *convention_layer_fmt(int id, int decode) {
  for (int k = 0; k < NUM_CONVENTIONS; k++)
    if (CONVENTIONS[k].id == id) return decode ? CONVENTIONS[k].cache_fmt : CONVENTIONS[k].block_fmt;
  return decode ? "block_cache_%d" : "block_%d";
}
