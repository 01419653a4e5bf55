/* md_exec.c - multi-device execution, following the plans of md_plan.c. */
#include "shim_internal.h"

/* ------------------------------------------------------------------ */
/* 10. multi-device execution (follows the plans of section 9)         */
/* ------------------------------------------------------------------ */
/*
 * Not verified on hardware: the simulator has one device.  What runs here
 * is the plan checked by the unit tests: one launch per net over all
 * devices; host data (ids, positions, masks) uploaded to every device's
 * input; each device keeps its share of the KV cache (its history_k/v
 * inputs, with that device's KV heads); hidden states that a net leaves on
 * fewer devices than the next net reads them from are copied across
 * through the host.  Kept simple (uploads every layer, copies K/V rows
 * after each launch) rather than fast.
 */

static int md_check(tpc_model *m, bm_status_t st, const char *what, int dev) {
  if (st != 0) return fail(m, TPC_E_RUNTIME, "%s on device %d failed (status %d)", what, m->devids[dev], st);
  return TPC_OK;
}

static int md_upload(tpc_model *m, int dev, bmapi_mem_t dst, size_t off, const void *src, size_t size,
                     const char *what) {
  m->stats.timing.copies++;
  return md_check(m, TIMED(RT.s2d(m->handles[dev], dst, (void *)src, (unsigned int)size, (unsigned int)off)),
                  what, dev);
}

static int md_download(tpc_model *m, int dev, void *dst, bmapi_mem_t src, size_t off, size_t size,
                       const char *what) {
  m->stats.timing.copies++;
  return md_check(m, TIMED(RT.d2s(m->handles[dev], dst, src, (unsigned int)size, (unsigned int)off)), what, dev);
}

static int md_d2d(tpc_model *m, int dev, bmapi_mem_t dst, size_t dst_off, bmapi_mem_t src, size_t src_off,
                  size_t size, const char *what) {
  m->stats.timing.copies++;
  return md_check(m, TIMED(RT.d2d(m->handles[dev], dst, dst_off, src, src_off, size)), what, dev);
}

static int md_sync_all(tpc_model *m) {
  for (int d = 0; d < m->num_handles; d++) {
    bm_status_t st = TIMED(RT.thread_sync(m->handles[d]));
    if (st != 0) return fail(m, TPC_E_RUNTIME, "device %d failed while running the model (status %d)",
                             m->devids[d], st);
  }
  return TPC_OK;
}

static const tpc_net_plan *md_plan(tpc_model *m, net_t n) {
  for (int i = 0; i < m->num_nets; i++)
    if (!strcmp(m->net_names[i], n->name)) return &m->md.plans[i];
  return NULL;
}

int tpc_net_plan_of(const tpc_model *m, const char *name, tpc_net_plan *out) {
  if (!m || !name || !out || !m->md.plans) return TPC_E_ARG;
  for (int i = 0; i < m->num_nets; i++)
    if (!strcmp(m->net_names[i], name)) {
      *out = m->md.plans[i];
      return TPC_OK;
    }
  return TPC_E_ARG;
}

/* Tensors over the net's own buffers, passthrough inputs tied to their
 * outputs as planned. */
static void md_tensors(net_t n, const tpc_net_plan *p, bmapi_tensor_t *in, bmapi_tensor_t *out) {
  own_tensors(n, 0, in, out);
  for (int i = 0; i < n->input_num; i++)
    if (p->in_tie[i] >= 0) in[i].device_mem = out[p->in_tie[i]].device_mem;
}

/* Give every device's `role` input of net n the hidden rows in hid[d]
 * (bytes each); devices without them get a copy of the first device's
 * through the host. */
static int md_feed_hidden(tpc_model *m, const tpc_net_plan *p, bmapi_tensor_t *in, const bmapi_mem_t *hid,
                          const int *have, size_t bytes) {
  int N = m->d.num_device, src = -1, rc;
  for (int d = 0; d < N && src < 0; d++) if (have[d]) src = d;
  if (src < 0) return fail(m, TPC_E_MODEL, "no device holds the hidden states");
  int fetched = 0;
  for (int d = 0; d < N; d++) {
    int k = p->role_input[TPC_ROLE_HIDDEN][d];
    if (have[d]) { in[k].device_mem = hid[d]; continue; }
    if (!fetched) {
      if ((rc = md_sync_all(m))) return rc;
      if (bytes > m->md.host_bytes) return fail(m, TPC_E_MODEL, "hidden states larger than expected");
      if ((rc = md_download(m, src, m->md.host, hid[src], 0, bytes, "hidden states"))) return rc;
      fetched = 1;
    }
    if ((rc = md_upload(m, d, in[k].device_mem, 0, m->md.host, bytes, "hidden states"))) return rc;
  }
  return TPC_OK;
}

static int md_launch(tpc_model *m, net_t n, bmapi_tensor_t *in, bmapi_tensor_t *out) {
  m->stats.timing.launches++;
  bool ok = TIMED(RT.launch_tensor_ex(m->rt, n->name, in, n->input_num, out, n->output_num, true, false));
  if (!ok) return fail(m, TPC_E_RUNTIME, "the runtime refused to launch net %s", n->name);
  return TPC_OK;
}

/* Hidden outputs of a launched net, per device. */
static void md_hidden_out(tpc_model *m, const tpc_net_plan *p, const bmapi_tensor_t *out, bmapi_mem_t *hid,
                          int *have) {
  for (int d = 0; d < m->d.num_device; d++) {
    int k = p->role_output[TPC_ROLE_HIDDEN][d];
    have[d] = k >= 0;
    if (k >= 0) hid[d] = out[k].device_mem;
  }
}

static int md_head(tpc_model *m, const bmapi_mem_t *hid, const int *have, size_t row_off, int end, int *tok) {
  int N = m->d.num_device, rc;
  net_t lm = m->net.lm_head;
  const tpc_net_plan *p = m->md.p_lm;
  bmapi_tensor_t in[TPC_MAX_IO], out[TPC_MAX_IO];
  bmapi_mem_t rows[TPC_MAX_DEV];
  md_tensors(lm, p, in, out);
  for (int d = 0; d < N; d++) if (have[d]) rows[d] = mem_at(hid[d], row_off, m->buf.hidden_bytes);
  if ((rc = md_feed_hidden(m, p, in, rows, have, m->buf.hidden_bytes))) return rc;
  if ((rc = md_launch(m, lm, in, out))) return rc;
  if ((rc = md_sync_all(m))) return rc;
  int src = -1;
  for (int d = 0; d < N && src < 0; d++) if (p->role_output[TPC_ROLE_HIDDEN][d] >= 0) src = d;
  bmapi_mem_t res = out[p->role_output[TPC_ROLE_HIDDEN][src]].device_mem;
  if (m->d.lm_head_kind == 1) {
    int32_t t = 0;
    if ((rc = md_download(m, src, &t, res, 0, 4, "the next token"))) return rc;
    *tok = t;
  } else {
    int v = m->d.vocab_size, es = dtype_size(m->d.logits_dtype), best = 0;
    if ((rc = md_download(m, src, m->smp.logits_raw, res, 0, (size_t)v * es, "logits"))) return rc;
    for (int i = 0; i < v; i++) {
      m->smp.logits[i] = es == 4 ? ((float *)m->smp.logits_raw)[i]
                             : half_to_float(((unsigned short *)m->smp.logits_raw)[i], m->d.logits_dtype);
      if (m->smp.logits[i] > m->smp.logits[best]) best = i;
    }
    *tok = sampling_active(m) ? host_sample(m, m->smp.logits, end) : best;
  }
  m->kv.last_token = *tok;
  m->kv.token_on_device = 0;
  return TPC_OK;
}

int md_prefill(tpc_model *m, const int *ids, int n, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  int N = d->num_device, rc;
  net_t emb = m->net.embedding;
  const tpc_net_plan *pe = m->md.p_emb;
  bmapi_tensor_t in[TPC_MAX_IO], out[TPC_MAX_IO];
  const tpc_net_plan *p0 = m->md.p_block[0];
  int rows = d->is_dynamic ? n : m->net.block[0]->stages[0].input_shapes[p0->role_input[TPC_ROLE_HIDDEN][0]].dims[1];
  int emb_rows = emb->is_dynamic ? n : emb->stages[0].input_shapes[pe->role_input[TPC_ROLE_IDS][0]].dims[1];
  if (emb_rows > m->buf.ids_cap || rows > m->buf.ids_cap) return fail(m, TPC_E_MODEL, "embedding input longer than expected");

  memset(m->buf.ids_buf, 0, sizeof(int32_t) * (size_t)m->buf.ids_cap);
  memcpy(m->buf.ids_buf, ids, sizeof(int32_t) * (size_t)n);
  md_tensors(emb, pe, in, out);
  for (int dv = 0; dv < N; dv++) {
    int k = pe->role_input[TPC_ROLE_IDS][dv];
    if (emb->is_dynamic) set_len(&in[k].shape, n);
    if ((rc = md_upload(m, dv, in[k].device_mem, 0, m->buf.ids_buf, sizeof(int32_t) * (size_t)emb_rows, "token ids")))
      return rc;
  }
  if ((rc = md_launch(m, emb, in, out))) return rc;
  bmapi_mem_t hid[TPC_MAX_DEV];
  int have[TPC_MAX_DEV];
  md_hidden_out(m, pe, out, hid, have);

  /* positions and the causal mask, the same on every device */
  int32_t *pos = calloc((size_t)rows, sizeof(int32_t));
  if (!pos) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < n; i++) pos[i] = i;
  int mask_rows = 0, mask_cols = 0;
  if (d->prefill_has_mask) {
    const bmapi_shape_t *ms = &m->net.block[0]->stages[0].input_shapes[p0->role_input[TPC_ROLE_MASK][0]];
    mask_rows = d->is_dynamic ? n : ms->dims[ms->num_dims - 2];
    mask_cols = d->is_dynamic ? n : ms->dims[ms->num_dims - 1];
    if ((rc = ensure_mask_buf(m, (size_t)mask_rows * mask_cols))) goto done;
    build_prefill_mask(m->buf.mask_buf, mask_rows, mask_cols, n,
                       mask_min(m->net.block[0]->input_dtypes[p0->role_input[TPC_ROLE_MASK][0]]));
  }
  for (int i = 0; i < d->num_layers; i++) {
    net_t b = m->net.block[i];
    const tpc_net_plan *p = m->md.p_block[i];
    md_tensors(b, p, in, out);
    if ((rc = md_feed_hidden(m, p, in, hid, have, (size_t)rows * m->buf.hidden_bytes))) goto done;
    for (int dv = 0; dv < N; dv++) {
      int kh = p->role_input[TPC_ROLE_HIDDEN][dv], kp = p->role_input[TPC_ROLE_POS][dv];
      int km = p->role_input[TPC_ROLE_MASK][dv];
      if (d->is_dynamic) {
        set_len(&in[kh].shape, n);
        set_len(&in[kp].shape, n);
        if (km >= 0) { in[km].shape.dims[in[km].shape.num_dims - 2] = n; in[km].shape.dims[in[km].shape.num_dims - 1] = n; }
      }
      if ((rc = md_upload(m, dv, in[kp].device_mem, 0, pos, sizeof(int32_t) * (size_t)rows, "position ids")))
        goto done;
      if (km >= 0 && (rc = md_upload(m, dv, in[km].device_mem, 0, m->buf.mask_buf,
                                     (size_t)mask_rows * mask_cols * 2, "prefill mask")))
        goto done;
    }
    if ((rc = md_launch(m, b, in, out))) goto done;
    for (int dv = 0; dv < N; dv++) {
      size_t bytes = (size_t)n * m->buf.kv_row_bytes;
      if ((rc = md_d2d(m, dv, m->md.kv_k[i * N + dv], 0, out[p->role_output[TPC_ROLE_K][dv]].device_mem, 0, bytes,
                       "K cache")) ||
          (rc = md_d2d(m, dv, m->md.kv_v[i * N + dv], 0, out[p->role_output[TPC_ROLE_V][dv]].device_mem, 0, bytes,
                       "V cache")))
        goto done;
    }
    md_hidden_out(m, p, out, hid, have);
  }
  memcpy(m->kv.tokens, ids, sizeof(int32_t) * (size_t)n);
  if (need_head) {
    rc = md_head(m, hid, have, (size_t)(n - 1) * m->buf.hidden_bytes, n, next_token);
  } else {
    m->kv.token_on_device = 0;
    rc = md_sync_all(m);
  }
  if (!rc) m->kv.position = n;
done:
  free(pos);
  return rc;
}

int md_decode(tpc_model *m, int token, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  int N = d->num_device, p = m->kv.position, rc, L = d->kv_len;
  net_t ec = m->net.embedding_cache;
  const tpc_net_plan *pe = m->md.p_embc;
  bmapi_tensor_t in[TPC_MAX_IO], out[TPC_MAX_IO];
  int32_t t = token, pos = p;
  md_tensors(ec, pe, in, out);
  for (int dv = 0; dv < N; dv++)
    if ((rc = md_upload(m, dv, in[pe->role_input[TPC_ROLE_IDS][dv]].device_mem, 0, &t, 4, "token id"))) return rc;
  if ((rc = md_launch(m, ec, in, out))) return rc;
  bmapi_mem_t hid[TPC_MAX_DEV];
  int have[TPC_MAX_DEV];
  md_hidden_out(m, pe, out, hid, have);
  unsigned short neg = mask_min(d->mask_dtype);
  if ((rc = ensure_mask_buf(m, (size_t)L + 1))) return rc;
  for (int j = 0; j <= L; j++) m->buf.mask_buf[j] = (j < p || j == L) ? 0 : neg;
  for (int i = 0; i < d->num_layers; i++) {
    net_t c = m->net.block_cache[i];
    const tpc_net_plan *pl = m->md.p_cache[i];
    md_tensors(c, pl, in, out);
    if ((rc = md_feed_hidden(m, pl, in, hid, have, m->buf.hidden_bytes))) return rc;
    for (int dv = 0; dv < N; dv++) {
      in[pl->role_input[TPC_ROLE_HIST_K][dv]].device_mem = m->md.kv_k[i * N + dv];
      in[pl->role_input[TPC_ROLE_HIST_V][dv]].device_mem = m->md.kv_v[i * N + dv];
      if ((rc = md_upload(m, dv, in[pl->role_input[TPC_ROLE_POS][dv]].device_mem, 0, &pos, 4, "position id")) ||
          (rc = md_upload(m, dv, in[pl->role_input[TPC_ROLE_MASK][dv]].device_mem, 0, m->buf.mask_buf,
                          (size_t)(L + 1) * 2, "decode mask")))
        return rc;
    }
    if ((rc = md_launch(m, c, in, out))) return rc;
    for (int dv = 0; dv < N; dv++) {
      size_t off = (size_t)p * m->buf.kv_row_bytes;
      if ((rc = md_d2d(m, dv, m->md.kv_k[i * N + dv], off, out[pl->role_output[TPC_ROLE_K][dv]].device_mem, 0,
                       m->buf.kv_row_bytes, "K cache")) ||
          (rc = md_d2d(m, dv, m->md.kv_v[i * N + dv], off, out[pl->role_output[TPC_ROLE_V][dv]].device_mem, 0,
                       m->buf.kv_row_bytes, "V cache")))
        return rc;
    }
    md_hidden_out(m, pl, out, hid, have);
  }
  m->kv.tokens[p] = token;
  if (need_head) {
    if ((rc = md_head(m, hid, have, 0, p + 1, next_token))) return rc;
  } else if ((rc = md_sync_all(m))) {
    return rc;
  }
  m->kv.position = p + 1;
  return TPC_OK;
}

int md_reset(tpc_model *m) {
  int N = m->d.num_device;
  for (int i = 0; i < m->d.num_layers * N; i++) {
    int dv = i % N;
    bm_status_t st = TIMED(RT.memset_device(m->handles[dv], 0, m->md.kv_k[i]));
    if (st == 0) st = TIMED(RT.memset_device(m->handles[dv], 0, m->md.kv_v[i]));
    if (st != 0) return fail(m, TPC_E_RUNTIME, "clearing the KV cache on device %d failed (status %d)",
                             m->devids[dv], st);
  }
  return md_sync_all(m);
}

/* A net's stage-0 description in the planner's terms. */
static int md_plan_one(tpc_model *m, int i) {
  net_t n = RT.get_network_info(m->rt, m->net_names[i]);
  if (!n) return fail(m, TPC_E_MODEL, "net %s has no description", m->net_names[i]);
  if (n->input_num > TPC_MAX_IO || n->output_num > TPC_MAX_IO)
    return fail(m, TPC_E_MODEL, "net %s has too many inputs/outputs (%d/%d)", n->name, n->input_num,
                n->output_num);
  tpc_tensor_info ins[TPC_MAX_IO], outs[TPC_MAX_IO];
  tpc_net_desc nd;
  net_desc_of(n, 0, ins, outs, &nd);
  return tpc_plan_net(&nd, m->d.num_device, &m->md.plans[i], m->err, sizeof m->err);
}

/* Plans for every net (the runtime's description of them). */
static int md_plan_all(tpc_model *m) {
  tpc_desc *d = &m->d;
  int rc;
  m->md.plans = calloc((size_t)m->num_nets, sizeof(tpc_net_plan));
  m->md.p_block = calloc((size_t)d->num_layers, sizeof(*m->md.p_block));
  m->md.p_cache = calloc((size_t)d->num_layers, sizeof(*m->md.p_cache));
  if (!m->md.plans || !m->md.p_block || !m->md.p_cache) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < m->num_nets; i++)
    if ((rc = md_plan_one(m, i))) return rc;
  m->md.p_emb = md_plan(m, m->net.embedding);
  m->md.p_embc = md_plan(m, m->net.embedding_cache);
  m->md.p_lm = md_plan(m, m->net.lm_head);
  for (int i = 0; i < d->num_layers; i++) {
    m->md.p_block[i] = md_plan(m, m->net.block[i]);
    m->md.p_cache[i] = md_plan(m, m->net.block_cache[i]);
  }
  return TPC_OK;
}

/* KV shares: io_alone decode nets own them (their history inputs),
 * otherwise they are allocated on each device. */
static int md_alloc_kv(tpc_model *m) {
  tpc_desc *d = &m->d;
  int N = d->num_device;
  size_t bytes = (size_t)d->kv_len * m->buf.kv_row_bytes;
  m->md.kv_k = calloc((size_t)d->num_layers * N, sizeof(bmapi_mem_t));
  m->md.kv_v = calloc((size_t)d->num_layers * N, sizeof(bmapi_mem_t));
  if (!m->md.kv_k || !m->md.kv_v) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < d->num_layers; i++) {
    net_t c = m->net.block_cache[i];
    const tpc_net_plan *p = m->md.p_cache[i];
    for (int dv = 0; dv < N; dv++) {
      bmapi_mem_t *k = &m->md.kv_k[i * N + dv], *v = &m->md.kv_v[i * N + dv];
      if (c->addr_mode == 1) {
        *k = c->stages[0].input_mems[p->role_input[TPC_ROLE_HIST_K][dv]];
        *v = c->stages[0].input_mems[p->role_input[TPC_ROLE_HIST_V][dv]];
      } else {
        m->md.own_kv = 1;
        if (RT.malloc_device_byte(m->handles[dv], k, (unsigned int)bytes) != 0 ||
            RT.malloc_device_byte(m->handles[dv], v, (unsigned int)bytes) != 0)
          return fail(m, TPC_E_NOMEM, "not enough memory on device %d for its share of the KV cache",
                      m->devids[dv]);
      }
    }
  }
  return TPC_OK;
}

/* Every input of a layer net must be something we fill (a role) or the
 * output of one of its own steps (tied by the planner).  TPU-MLIR 1.24's
 * --num_device decode nets also declare tensors of the layer's attention
 * (rotary products, the concatenated K/V, ...) as inputs of their last step,
 * which no step computes and no caller can know: the net's output then
 * depends on leftover memory (tests/fakedev/unproduced.c shows it), so such
 * a bmodel is refused rather than allowed to answer wrongly.
 * TPUCHAT_MULTIDEV_UNCHECKED=1 runs it anyway, to diagnose. */
static int md_check_fed(tpc_model *m) {
  const char *env = getenv("TPUCHAT_MULTIDEV_UNCHECKED");
  if (env && !strcmp(env, "1")) return TPC_OK;
  for (int i = 0; i < 2 * m->d.num_layers; i++) {
    net_t n = i % 2 ? m->net.block_cache[i / 2] : m->net.block[i / 2];
    const tpc_net_plan *p = i % 2 ? m->md.p_cache[i / 2] : m->md.p_block[i / 2];
    int unfed = p->num_passthrough_in - p->num_tied;
    if (unfed <= 0) continue;
    const char *first = "?";
    for (int k = 0; k < n->input_num; k++)
      if (p->in_role[k] == TPC_ROLE_NONE && p->in_tie[k] < 0) { first = n->input_names[k]; break; }
    return fail(m, TPC_E_MODEL,
                "this multi-device bmodel cannot give right answers: net %s reads %d tensor%s that none of its "
                "steps computes (%s%s), a fault of the compiler that made it (TPU-MLIR 1.24 --num_device)",
                n->name, unfed, unfed == 1 ? "" : "s", first, unfed > 1 ? ", ..." : "");
  }
  return TPC_OK;
}

/* Plans, checks, host scratch and the per-device KV shares. */
int md_prepare(tpc_model *m) {
  tpc_desc *d = &m->d;
  int N = d->num_device, rc;
  if (!RT.new_net_info) return fail(m, TPC_E_LIB, "this libsophon is too old for multi-device bmodels");
  if (!m->net.embedding_cache)
    return fail(m, TPC_E_MODEL, "multi-device bmodels are run in the llm_convert layout only; this one is %s",
                m->roles.name);
  m->md.on = 1;
  if ((rc = md_plan_all(m))) return rc;
  if ((rc = md_check_fed(m))) return rc;
  d->prefill_has_mask = m->md.p_block[0]->role_input[TPC_ROLE_MASK][0] >= 0;
  /* Not driven across devices here: block_kv nets and on-device heads. */
  d->has_block_kv = 0;
  m->net.greedy_head = NULL;
  m->net.sample_head = NULL;
  d->has_greedy_head = d->has_sample_head = d->has_penalty_sample_head = 0;

  const tpc_net_plan *c0 = m->md.p_cache[0];
  const bmapi_shape_t *hk = &m->net.block_cache[0]->stages[0].input_shapes[c0->role_input[TPC_ROLE_HIST_K][0]];
  int kv_dtype = m->net.block_cache[0]->input_dtypes[c0->role_input[TPC_ROLE_HIST_K][0]];
  m->buf.kv_row_bytes = shape_count(hk, 2) * (size_t)dtype_size(kv_dtype);
  d->kv_heads = c0->kv_heads_total;
  d->kv_cache_bytes = (long long)d->num_layers * 2 * d->kv_len * (long long)m->buf.kv_row_bytes * N;

  if ((rc = alloc_host_scratch(m, 1))) return rc;
  m->md.host_bytes = (size_t)m->buf.ids_cap * m->buf.hidden_bytes; /* bounce buffer */
  m->md.host = malloc(m->md.host_bytes);
  if (!m->md.host) return fail(m, TPC_E_NOMEM, "out of host memory");
  return md_alloc_kv(m);
}

void md_free(tpc_model *m) {
  if (m->md.own_kv && m->md.kv_k && m->md.kv_v) {
    int N = m->d.num_device;
    for (int i = 0; i < m->d.num_layers * N; i++) {
      if (m->md.kv_k[i].size) RT.free_device(m->handles[i % N], m->md.kv_k[i]);
      if (m->md.kv_v[i].size) RT.free_device(m->handles[i % N], m->md.kv_v[i]);
    }
  }
  free(m->md.plans);
  free(m->md.p_block);
  free(m->md.p_cache);
  free(m->md.kv_k);
  free(m->md.kv_v);
  free(m->md.host);
}
