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

int describe_nets(tpc_model *m) {
  tpc_desc *d = &m->d;
  m->net.embedding = find_net(m, "embedding");
  m->net.embedding_cache = find_net(m, "embedding_cache");
  m->net.lm_head = find_net(m, "lm_head");
  m->net.greedy_head = find_net(m, "greedy_head");
  d->has_embedding_cache = m->net.embedding_cache != NULL;
  d->has_greedy_head = m->net.greedy_head != NULL;
  d->has_sample_head = find_net(m, "sample_head") != NULL;
  d->has_penalty_sample_head = find_net(m, "penalty_sample_head") != NULL;
  m->net.sample_head = d->has_sample_head ? find_net(m, "sample_head") : find_net(m, "penalty_sample_head");
  d->has_block_kv = find_net(m, "block_kv_0") != NULL;

  /* LLM-TPU's older share-cache demos compiled extra nets for the
   * unshared part; their KV layout is not documented by the nets alone and
   * no compiler we can run makes one, so refuse them plainly. */
  if (find_net(m, "block_unshare_0") || find_net(m, "embedding_unshare"))
    return fail(m, TPC_E_MODEL,
                "this bmodel uses the older share-cache layout (embedding_unshare / block_unshare_N), which "
                "tpuchat does not run; compile it with llm_convert --use_history_kv and use --prefix-file");

  char name[64];
  int layers = 0;
  for (;; layers++) {
    snprintf(name, sizeof name, "block_%d", layers);
    if (!find_net(m, name)) break;
  }
  d->num_layers = layers;
  if (!m->net.embedding || !m->net.lm_head || layers == 0 || !find_net(m, "block_cache_0") ||
      !m->net.embedding_cache) {
    char list[300] = "";
    for (int i = 0; i < m->num_nets && strlen(list) < 250; i++) {
      strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
      strncat(list, m->net_names[i], sizeof list - strlen(list) - 1);
    }
    return fail(m, TPC_E_MODEL,
                "not an LLM bmodel: it needs nets embedding, embedding_cache, block_0, "
                "block_cache_0 and lm_head, but has: %s%s", list,
                m->num_nets > 12 ? ", ..." : "");
  }
  m->net.block = calloc((size_t)layers, sizeof(net_t));
  m->net.block_cache = calloc((size_t)layers, sizeof(net_t));
  if (!m->net.block || !m->net.block_cache) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < layers; i++) {
    snprintf(name, sizeof name, "block_%d", i);
    m->net.block[i] = find_net(m, name);
    snprintf(name, sizeof name, "block_cache_%d", i);
    m->net.block_cache[i] = find_net(m, name);
    if (!m->net.block_cache[i])
      return fail(m, TPC_E_MODEL, "bmodel has block_%d but no block_cache_%d", i, i);
  }
  if (d->has_block_kv) {
    m->net.block_kv = calloc((size_t)layers, sizeof(net_t));
    if (!m->net.block_kv) return fail(m, TPC_E_NOMEM, "out of host memory");
    for (int i = 0; i < layers; i++) {
      snprintf(name, sizeof name, "block_kv_%d", i);
      if (!(m->net.block_kv[i] = find_net(m, name)) || m->net.block_kv[i]->input_num < 4) {
        d->has_block_kv = 0; /* incomplete: fall back to decode appends */
        break;
      }
    }
    if (d->has_block_kv) {
      m->net.block_kv_len = m->net.block_kv[0]->stages[0].input_shapes[0].dims[1];
      if (m->net.block_kv_len > m->net.embedding->stages[0].input_shapes[0].dims[1] && !m->net.embedding->is_dynamic)
        m->net.block_kv_len = m->net.embedding->stages[0].input_shapes[0].dims[1];
    }
  }

  net_t b0 = m->net.block[0], c0 = m->net.block_cache[0];
  d->num_device = 1;
  if (RT.new_net_info && b0->input_loc_devices) {
    for (int i = 0; i < b0->input_num; i++)
      if (b0->input_loc_devices[i] + 1 > d->num_device) d->num_device = b0->input_loc_devices[i] + 1;
  }
  int b0_in = per_device(b0, b0->input_num, d->num_device);
  int c0_in = per_device(c0, c0->input_num, d->num_device);
  if (b0_in < 2 || c0_in < 5)
    return fail(m, TPC_E_MODEL,
                "unexpected block layout: block_0 has %d inputs (want hidden, position_ids[, mask]), "
                "block_cache_0 has %d (want hidden, position_ids, mask, history_k, history_v)",
                b0_in, c0_in);

  d->is_dynamic = b0->is_dynamic ? 1 : 0;
  d->prefill_has_mask = b0_in >= 3;
  d->num_stages = b0->stage_num > 8 ? 8 : b0->stage_num;
  d->seq_len = 0;
  for (int s = 0; s < d->num_stages; s++) {
    d->stage_seq_len[s] = b0->stages[s].input_shapes[0].dims[1];
    if (d->stage_seq_len[s] > d->seq_len) d->seq_len = d->stage_seq_len[s];
  }
  /* Decode nets may come in several stages (shorter KV histories, e.g. with
   * --use_history_kv); the cache is sized for the longest one. */
  m->net.cache_stage = 0;
  for (int s = 1; s < c0->stage_num; s++)
    if (c0->stages[s].input_shapes[3].dims[1] > c0->stages[m->net.cache_stage].input_shapes[3].dims[1])
      m->net.cache_stage = s;
  const bmapi_shape_t *hk = &c0->stages[m->net.cache_stage].input_shapes[3];
  const bmapi_shape_t *hid = &b0->stages[0].input_shapes[0];
  d->hidden_size = hid->dims[hid->num_dims - 1];
  d->kv_len = hk->dims[1];
  d->kv_heads = hk->num_dims >= 4 ? hk->dims[2] : 1;
  d->head_dim = hk->dims[hk->num_dims - 1];
  d->float_dtype = b0->input_dtypes[0];
  d->mask_dtype = c0->input_dtypes[2];
  d->addr_mode = RT.new_net_info ? c0->addr_mode : 0;
  d->new_net_info = RT.new_net_info;
  if (d->float_dtype != BMAPI_BF16 && d->float_dtype != BMAPI_F16)
    return fail(m, TPC_E_MODEL, "hidden states are dtype %d; only bf16 and f16 builds are supported",
                d->float_dtype);
  if (d->mask_dtype != BMAPI_BF16 && d->mask_dtype != BMAPI_F16)
    return fail(m, TPC_E_MODEL, "attention mask is dtype %d; expected bf16 or f16", d->mask_dtype);
  const bmapi_shape_t *cmask = &c0->stages[m->net.cache_stage].input_shapes[2];
  if (cmask->dims[cmask->num_dims - 1] != d->kv_len + 1)
    return fail(m, TPC_E_MODEL, "decode mask has %d columns, expected kv_len + 1 = %d",
                cmask->dims[cmask->num_dims - 1], d->kv_len + 1);
  if (d->seq_len < 1 || d->seq_len > d->kv_len)
    return fail(m, TPC_E_MODEL, "prefill length %d does not fit the KV length %d", d->seq_len, d->kv_len);

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
  d->kv_cache_bytes = (long long)layers * 2 * (long long)d->kv_len *
                      (long long)shape_count(hk, 2) * dtype_size(c0->input_dtypes[3]);
  m->buf.kv_row_bytes = shape_count(hk, 2) * (size_t)dtype_size(c0->input_dtypes[3]);
  m->buf.esize = dtype_size(d->float_dtype);
  m->buf.hidden_bytes = (size_t)d->hidden_size * (size_t)m->buf.esize;
  return describe_vision(m);
}
