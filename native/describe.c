/* describe.c - read a loaded bmodel's nets into the description Python sees. */
#include "shim_internal.h"

const char *tpc_error(const tpc_model *m) { return m ? m->err : "no model"; }

int fail(tpc_model *m, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m->err, sizeof m->err, fmt, ap);
  va_end(ap);
  return code;
}

net_t find_net(tpc_model *m, const char *name) {
  for (int i = 0; i < m->num_nets; i++)
    if (strcmp(m->net_names[i], name) == 0) return RT.get_network_info(m->rt, name);
  return NULL;
}

int is_float_dtype(int dt) { return dt == BMAPI_F16 || dt == BMAPI_BF16 || dt == BMAPI_F32; }
int dtype_size(int dt) {
  switch (dt) {
    case BMAPI_F32: case BMAPI_INT32: case BMAPI_UINT32: return 4;
    case BMAPI_F16: case BMAPI_BF16: case BMAPI_INT16: case BMAPI_UINT16: return 2;
    default: return 1;
  }
}

size_t shape_count(const bmapi_shape_t *s, int from) {
  size_t n = 1;
  for (int i = from; i < s->num_dims; i++) n *= (size_t)s->dims[i];
  return n;
}

/* Inputs of a multi-device net are the per-device list repeated; this is
 * the count for one device. */
int per_device(net_t n, int count, int num_device) {
  return num_device > 1 ? count / num_device : count;
}

/* A net's description at one stage in the terms of tpc_tensor_info (the
 * planner's and the role matcher's input). */
void net_desc_of(net_t n, int stage, tpc_tensor_info *ins, tpc_tensor_info *outs, tpc_net_desc *nd) {
  for (int k = 0; k < n->input_num + n->output_num; k++) {
    int is_out = k >= n->input_num, j = is_out ? k - n->input_num : k;
    tpc_tensor_info *t = is_out ? &outs[j] : &ins[j];
    const bmapi_shape_t *s = is_out ? &n->stages[stage].output_shapes[j] : &n->stages[stage].input_shapes[j];
    memset(t, 0, sizeof *t);
    t->name = is_out ? n->output_names[j] : n->input_names[j];
    t->dtype = is_out ? n->output_dtypes[j] : n->input_dtypes[j];
    t->num_dims = s->num_dims;
    for (int q = 0; q < s->num_dims && q < 8; q++) t->dims[q] = s->dims[q];
    const int *loc = RT.new_net_info ? (is_out ? n->output_loc_devices : n->input_loc_devices) : NULL;
    t->device = loc ? loc[j] : 0;
  }
  nd->name = n->name;
  nd->num_inputs = n->input_num;
  nd->num_outputs = n->output_num;
  nd->inputs = ins;
  nd->outputs = outs;
}

/* Every net's summary (stage 0 tensors, rows per stage) for the matcher;
 * the tensor arrays are one allocation the caller frees. */
static tpc_net_summary *summarise_nets(tpc_model *m, tpc_tensor_info **store) {
  int total = 0;
  for (int i = 0; i < m->num_nets; i++) {
    net_t n = RT.get_network_info(m->rt, m->net_names[i]);
    total += n ? n->input_num + n->output_num : 0;
  }
  tpc_net_summary *s = calloc((size_t)m->num_nets, sizeof *s);
  tpc_tensor_info *t = *store = calloc((size_t)total + 1, sizeof *t);
  if (!s || !t) {
    free(s);
    return NULL;
  }
  for (int i = 0; i < m->num_nets; i++) {
    net_t n = RT.get_network_info(m->rt, m->net_names[i]);
    s[i].io.name = m->net_names[i];
    if (!n) continue;
    net_desc_of(n, 0, t, t + n->input_num, &s[i].io);
    t += n->input_num + n->output_num;
    s[i].num_stages = n->stage_num;
    s[i].is_dynamic = n->is_dynamic;
    for (int k = 0; k < n->stage_num && k < 8; k++)
      s[i].stage_rows[k] = n->input_num && n->stages[k].input_shapes[0].num_dims > 1
                               ? n->stages[k].input_shapes[0].dims[1] : 0;
  }
  return s;
}

/* Match the nets against the table of conventions (roles.c). */
static int match_roles(tpc_model *m) {
  tpc_tensor_info *store = NULL;
  tpc_net_summary *s = summarise_nets(m, &store);
  if (!s) {
    free(store);
    return fail(m, TPC_E_NOMEM, "out of host memory");
  }
  int rc = tpc_match_roles(s, m->num_nets, &m->roles, m->err, sizeof m->err);
  free(s);
  free(store);
  return rc;
}

static net_t role_net(tpc_model *m, int index) { return index >= 0 ? find_net(m, m->net_names[index]) : NULL; }

/* Nets by role, layer by layer, from the matched convention. */
static int find_role_nets(tpc_model *m) {
  tpc_desc *d = &m->d;
  tpc_roles *r = &m->roles;
  char name[64];
  int layers = d->num_layers = r->num_layers;
  m->net.embedding = role_net(m, r->embedding);
  m->net.embedding_cache = role_net(m, r->embedding_cache);
  m->net.lm_head = role_net(m, r->lm_head);
  m->net.greedy_head = role_net(m, r->greedy_head);
  m->net.sample_head = role_net(m, r->sample_head);
  memcpy(m->net.sample_in, r->sample_in, sizeof m->net.sample_in);
  m->net.decode_embed = m->net.embedding_cache ? m->net.embedding_cache : m->net.embedding;
  m->net.decode_stage = m->net.embedding_cache ? 0 : r->decode_embed_stage;
  snprintf(d->convention, sizeof d->convention, "%s", r->name);
  d->decode_embed = r->decode_embed;
  d->kv_layout = r->kv_layout;
  d->learned_positions = r->learned_positions;
  m->buf.mask_value = r->mask_value != 0 ? r->mask_value : -10000.0f;
  /* The layers' inputs by role (the matcher checked these shapes). */
  int sliding = r->kv_layout == TPC_KV_SLIDING, pos = r->learned_positions ? -1 : 1;
  m->net.block_pos = pos;
  m->net.block_mask = pos < 0 ? 1 : 2; /* after hidden (and positions); may be absent: see describe_layout */
  m->net.cache_pos = pos;
  m->net.cache_mask = 2;
  m->net.cache_k = sliding ? 1 : 3;
  m->net.cache_v = sliding ? -1 : 4;
  d->has_embedding_cache = m->net.embedding_cache != NULL;
  d->has_greedy_head = m->net.greedy_head != NULL;
  d->has_sample_head = find_net(m, "sample_head") != NULL;
  d->has_penalty_sample_head = find_net(m, "penalty_sample_head") != NULL;
  m->net.block = calloc((size_t)layers, sizeof(net_t));
  m->net.block_cache = calloc((size_t)layers, sizeof(net_t));
  if (!m->net.block || !m->net.block_cache) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < layers; i++) {
    snprintf(name, sizeof name, convention_layer_fmt(r->convention, 0), i);
    m->net.block[i] = find_net(m, name);
    snprintf(name, sizeof name, convention_layer_fmt(r->convention, 1), i);
    if (!(m->net.block_cache[i] = find_net(m, name)))
      return fail(m, TPC_E_MODEL, "bmodel has %s's layer %d prefill net but no %s", r->name, i, name);
  }
  return TPC_OK;
}

/* block_kv_N (--use_history_kv): prefill chunks against the cache. */
static int find_block_kv(tpc_model *m) {
  tpc_desc *d = &m->d;
  char name[64];
  d->has_block_kv = m->roles.convention == TPC_CONV_LLM_CONVERT && find_net(m, "block_kv_0") != NULL;
  if (!d->has_block_kv) return TPC_OK;
  m->net.block_kv = calloc((size_t)d->num_layers, sizeof(net_t));
  if (!m->net.block_kv) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < d->num_layers; i++) {
    snprintf(name, sizeof name, "block_kv_%d", i);
    if (!(m->net.block_kv[i] = find_net(m, name)) || m->net.block_kv[i]->input_num < 4) {
      d->has_block_kv = 0; /* incomplete: fall back to decode appends */
      return TPC_OK;
    }
  }
  m->net.block_kv_len = m->net.block_kv[0]->stages[0].input_shapes[0].dims[1];
  if (m->net.block_kv_len > m->net.embedding->stages[0].input_shapes[0].dims[1] && !m->net.embedding->is_dynamic)
    m->net.block_kv_len = m->net.embedding->stages[0].input_shapes[0].dims[1];
  return TPC_OK;
}

/* Devices, prefill stages and lengths from layer 0's prefill net. */
static int describe_layout(tpc_model *m) {
  tpc_desc *d = &m->d;
  net_t b0 = m->net.block[0], c0 = m->net.block_cache[0];
  d->num_device = 1;
  if (RT.new_net_info && b0->input_loc_devices) {
    for (int i = 0; i < b0->input_num; i++)
      if (b0->input_loc_devices[i] + 1 > d->num_device) d->num_device = b0->input_loc_devices[i] + 1;
  }
  int b0_in = per_device(b0, b0->input_num, d->num_device);
  int c0_in = per_device(c0, c0->input_num, d->num_device);
  int c0_want = (m->net.cache_v > m->net.cache_k ? m->net.cache_v : m->net.cache_k) + 1;
  if (b0_in < 2 || c0_in < c0_want)
    return fail(m, TPC_E_MODEL,
                "unexpected block layout: %s has %d inputs (want hidden, position_ids[, mask]), "
                "%s has %d (want %d)", b0->name, b0_in, c0->name, c0_in, c0_want);
  if (d->kv_layout == TPC_KV_SLIDING && d->num_device > 1)
    return fail(m, TPC_E_MODEL, "a multi-device bmodel with %s's sliding KV cache is not supported", d->convention);
  d->is_dynamic = b0->is_dynamic ? 1 : 0;
  d->prefill_has_mask = b0_in > m->net.block_mask;
  if (!d->prefill_has_mask) m->net.block_mask = -1;
  d->num_stages = b0->stage_num > 8 ? 8 : b0->stage_num;
  d->seq_len = 0;
  for (int s = 0; s < d->num_stages; s++) {
    d->stage_seq_len[s] = b0->stages[s].input_shapes[0].dims[1];
    if (d->stage_seq_len[s] > d->seq_len) d->seq_len = d->stage_seq_len[s];
  }
  return TPC_OK;
}

/* The KV cache's shape and the dtypes, from layer 0's decode net. */
static int describe_kv(tpc_model *m) {
  tpc_desc *d = &m->d;
  net_t b0 = m->net.block[0], c0 = m->net.block_cache[0];
  /* Decode nets may come in several stages (shorter KV histories, e.g. with
   * --use_history_kv); the cache is sized for the longest one. */
  m->net.cache_stage = 0;
  int k = m->net.cache_k, sliding = d->kv_layout == TPC_KV_SLIDING;
  for (int s = 1; s < c0->stage_num; s++)
    if (c0->stages[s].input_shapes[k].dims[1] > c0->stages[m->net.cache_stage].input_shapes[k].dims[1])
      m->net.cache_stage = s;
  const bmapi_shape_t *hk = &c0->stages[m->net.cache_stage].input_shapes[k];
  const bmapi_shape_t *hid = &b0->stages[0].input_shapes[0];
  d->hidden_size = hid->dims[hid->num_dims - 1];
  d->kv_len = hk->dims[1];
  d->kv_heads = hk->num_dims >= 4 ? hk->dims[2] : 1;
  d->head_dim = hk->dims[hk->num_dims - 1] / (sliding ? 2 : 1); /* sliding: K|V side by side */
  d->float_dtype = b0->input_dtypes[0];
  d->mask_dtype = c0->input_dtypes[m->net.cache_mask];
  d->addr_mode = RT.new_net_info ? c0->addr_mode : 0;
  d->new_net_info = RT.new_net_info;
  /* f32 IO is WizardCoder's (its masks are written as f32 by masks.c); the
   * row layout's masks are half floats only. */
  int f32_ok = sliding;
  if (d->float_dtype != BMAPI_BF16 && d->float_dtype != BMAPI_F16 && !(f32_ok && d->float_dtype == BMAPI_F32))
    return fail(m, TPC_E_MODEL, "hidden states are dtype %d; only bf16 and f16 builds are supported",
                d->float_dtype);
  if (d->mask_dtype != BMAPI_BF16 && d->mask_dtype != BMAPI_F16 && !(f32_ok && d->mask_dtype == BMAPI_F32))
    return fail(m, TPC_E_MODEL, "attention mask is dtype %d; expected bf16 or f16", d->mask_dtype);
  const bmapi_shape_t *cmask = &c0->stages[m->net.cache_stage].input_shapes[m->net.cache_mask];
  if (cmask->dims[cmask->num_dims - 1] != d->kv_len + 1)
    return fail(m, TPC_E_MODEL, "decode mask has %d columns, expected kv_len + 1 = %d",
                cmask->dims[cmask->num_dims - 1], d->kv_len + 1);
  if (d->seq_len < 1 || d->seq_len > d->kv_len)
    return fail(m, TPC_E_MODEL, "prefill length %d does not fit the KV length %d", d->seq_len, d->kv_len);
  m->buf.kv_row_bytes = shape_count(hk, 2) * (size_t)dtype_size(c0->input_dtypes[k]);
  d->kv_cache_bytes = (long long)d->num_layers * (sliding ? 1 : 2) * (long long)d->kv_len * (long long)m->buf.kv_row_bytes;
  m->buf.esize = dtype_size(d->float_dtype);
  m->buf.hidden_bytes = (size_t)d->hidden_size * (size_t)m->buf.esize;
  return TPC_OK;
}

static int describe_lm_head(tpc_model *m) {
  tpc_desc *d = &m->d;
  int out_dt = m->net.lm_head->output_dtypes[0];
  const bmapi_shape_t *lo = &m->net.lm_head->stages[0].output_shapes[0];
  if (out_dt == BMAPI_INT32) {
    d->lm_head_kind = 1;
  } else if (is_float_dtype(out_dt)) {
    d->lm_head_kind = 2;
    d->logits_dtype = out_dt;
    d->vocab_size = lo->dims[lo->num_dims - 1];
  } else {
    return fail(m, TPC_E_MODEL, "lm_head output dtype %d is neither a token id nor logits", out_dt);
  }
  d->num_nets = m->num_nets;
  return TPC_OK;
}

int describe_nets(tpc_model *m) {
  int rc;
  if ((rc = match_roles(m)) || (rc = find_role_nets(m)) || (rc = find_block_kv(m)) || (rc = describe_layout(m)) ||
      (rc = describe_kv(m)) || (rc = describe_lm_head(m)) || (rc = describe_share(m)))
    return rc;
  return describe_vision(m);
}
