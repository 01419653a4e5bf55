/* step.c - prefill and decode: the forward path over the nets. */
#include "shim_internal.h"

/* Learned positions (WizardCoder): the embedding's input_pos gets `rows`
 * entries, start.. for the n real tokens and 0 after them. */
static int upload_positions(tpc_model *m, const bmapi_tensor_t *ein, int start, int n, int rows) {
  if (!m->d.learned_positions) return TPC_OK;
  if (rows > m->buf.ids_cap) return fail(m, TPC_E_MODEL, "embedding input longer than expected");
  for (int i = 0; i < rows; i++) m->buf.ids_buf[i] = i < n ? start + i : 0;
  return upload(m, ein[1].device_mem, 0, m->buf.ids_buf, sizeof(int32_t) * (size_t)rows, "input_pos");
}

/* Run the embedding over ids[0, n) padded to `rows`; *hidden is its output. */
static int prefill_embed(tpc_model *m, const int *ids, int n, int rows, bmapi_mem_t *hidden) {
  net_t emb = m->net.embedding;
  /* Token ids, padding zeroed: padded rows still run through the nets and
   * must stay finite. */
  memset(m->buf.ids_buf, 0, sizeof(int32_t) * (size_t)m->buf.ids_cap);
  memcpy(m->buf.ids_buf, ids, sizeof(int32_t) * (size_t)n);
  int estage = emb->is_dynamic ? 0 : pick_stage(emb, rows), rc;
  if (estage < 0) return fail(m, TPC_E_MODEL, "embedding has no stage for %d tokens", rows);
  bmapi_tensor_t ein[2], eout[2];
  own_tensors(emb, estage, ein, eout);
  /* A static embedding reads all its rows, even when the blocks are
   * dynamic: upload the padding too, or it gathers stale ids. */
  int emb_rows = emb->is_dynamic ? rows : ein[0].shape.dims[1];
  if (emb->is_dynamic) set_len(&ein[0].shape, rows);
  if (emb_rows > m->buf.ids_cap) return fail(m, TPC_E_MODEL, "embedding input longer than expected");
  if ((rc = upload(m, ein[0].device_mem, 0, m->buf.ids_buf, sizeof(int32_t) * (size_t)emb_rows, "token ids")) ||
      (rc = upload_positions(m, ein, 0, n, emb_rows)) || (rc = launch(m, emb, ein, eout)))
    return rc;
  *hidden = eout[0].device_mem;
  return TPC_OK;
}

/* Positions 0..n-1 (padding 0) into ids_buf, the causal mask into mask_buf. */
static int prefill_host_inputs(tpc_model *m, int stage, int n, int *mask_rows, int *mask_cols) {
  tpc_desc *d = &m->d;
  net_t b0 = m->net.block[0];
  for (int i = 0; i < n; i++) m->buf.ids_buf[i] = i;
  memset(m->buf.ids_buf + n, 0, sizeof(int32_t) * (size_t)(m->buf.ids_cap - n));
  *mask_rows = *mask_cols = 0;
  if (!d->prefill_has_mask) return TPC_OK;
  int k = m->net.block_mask;
  const bmapi_shape_t *ms = &b0->stages[stage].input_shapes[k];
  *mask_rows = d->is_dynamic ? n : ms->dims[ms->num_dims - 2];
  *mask_cols = d->is_dynamic ? n : ms->dims[ms->num_dims - 1];
  int rc = ensure_mask_buf(m, (size_t)*mask_rows * *mask_cols);
  if (!rc) build_prefill_mask_as(m, b0->input_dtypes[k], *mask_rows, *mask_cols, n);
  return rc;
}

/* What one prefill needs across its layers. */
typedef struct {
  int stage, n, rows, mask_rows, mask_cols;
  bmapi_mem_t pos_mem, mask_mem; /* io_alone: layer 0's, shared by reference */
  int reupload;                  /* pos/mask must be written again (a cross layer ran) */
} prefill_plan;

/* One self-attention prefill layer: hidden in, hidden out, K/V rows into the cache. */
static int prefill_layer(tpc_model *m, int i, prefill_plan *pp, bmapi_mem_t *hidden) {
  tpc_desc *d = &m->d;
  net_t b = m->net.block[i];
  bmapi_tensor_t in[8], out[8];
  int n = pp->n, rows = pp->rows, kp = m->net.block_pos, km = m->net.block_mask, rc;
  size_t pos_bytes = sizeof(int32_t) * (size_t)rows;
  size_t mask_bytes = km < 0 ? 0 : (size_t)pp->mask_rows * pp->mask_cols * dtype_size(b->input_dtypes[km]);
  own_tensors(b, pp->stage, in, out);
  if (d->is_dynamic) {
    set_len(&in[0].shape, n);
    if (kp >= 0) set_len(&in[kp].shape, n);
    if (km >= 0) { in[km].shape.dims[in[km].shape.num_dims - 2] = n; in[km].shape.dims[in[km].shape.num_dims - 1] = n; }
  }
  if (m->buf.direct_io) {
    in[0].device_mem = *hidden;
    if (i == 0 || pp->reupload) {
      pp->reupload = 0;
      if (kp >= 0 && (rc = upload(m, pp->pos_mem, 0, m->buf.ids_buf, pos_bytes, "position ids"))) return rc;
      if (km >= 0 && (rc = upload(m, pp->mask_mem, 0, m->buf.mask_buf, mask_bytes, "prefill mask"))) return rc;
    }
    if (kp >= 0) in[kp].device_mem = pp->pos_mem;
    if (km >= 0) in[km].device_mem = pp->mask_mem;
    /* Row layout: K/V rows go straight into the cache (a view as large as
     * the net's biggest output: dynamic nets are checked against it). */
    if (d->kv_layout == TPC_KV_ROWS) {
      out[1].device_mem = kv_view(m, m->buf.kv_k[i], 0);
      out[2].device_mem = kv_view(m, m->buf.kv_v[i], 0);
    }
  } else {
    if (hidden->device_addr != in[0].device_mem.device_addr &&
        (rc = copy_d2d(m, in[0].device_mem, 0, *hidden, 0, (size_t)rows * m->buf.hidden_bytes, "hidden state")))
      return rc;
    if (kp >= 0 && (rc = upload(m, in[kp].device_mem, 0, m->buf.ids_buf, pos_bytes, "position ids"))) return rc;
    if (km >= 0 && (rc = upload(m, in[km].device_mem, 0, m->buf.mask_buf, mask_bytes, "prefill mask"))) return rc;
  }
  if ((rc = launch(m, b, in, out)) || (rc = kv_keep_prefill(m, i, out, n))) return rc;
  *hidden = out[0].device_mem;
  return TPC_OK;
}

int prefill_impl(tpc_model *m, const int *ids, int n, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  if (!ids || n < 1) return fail(m, TPC_E_ARG, "prefill needs at least one token");
  if (n > d->seq_len)
    return fail(m, TPC_E_TOO_LONG, "prompt of %d tokens is longer than this bmodel's prefill length %d",
                n, d->seq_len);
  if (m->md.on) return md_prefill(m, ids, n, need_head, next_token);
  net_t b0 = m->net.block[0];
  prefill_plan pp = {d->is_dynamic ? 0 : pick_stage(b0, n), n, 0, 0, 0, {0}, {0}, 0};
  if (pp.stage < 0) return fail(m, TPC_E_ARG, "no prefill stage holds %d tokens", n);
  pp.rows = d->is_dynamic ? n : b0->stages[pp.stage].input_shapes[0].dims[1];
  bmapi_mem_t hidden;
  int rc;
  if ((rc = prefill_embed(m, ids, n, pp.rows, &hidden))) return rc;
  if (m->net.block_pos >= 0) pp.pos_mem = b0->stages[pp.stage].input_mems[m->net.block_pos];
  if (m->net.block_mask >= 0) pp.mask_mem = b0->stages[pp.stage].input_mems[m->net.block_mask];
  if ((rc = prefill_host_inputs(m, pp.stage, n, &pp.mask_rows, &pp.mask_cols))) return rc;
  int image = m->vis.seq_img_pos >= 0;
  if (image && (rc = upload_cross_masks(m, n, pp.rows))) return rc;
  for (int i = 0; i < d->num_layers; i++) {
    if (m->vis.is_cross && m->vis.is_cross[i]) {
      if (!image) continue; /* text only: transformers skips these layers */
      if ((rc = cross_prefill_layer(m, i, pp.rows, &hidden))) return rc;
      pp.reupload = 1; /* the cross net may have overwritten the shared IO we reuse */
      continue;
    }
    if ((rc = prefill_layer(m, i, &pp, &hidden))) return rc;
  }
  /* The KV rows beyond n hold padding results now; the decode mask hides
   * them and decode overwrites them one by one. */
  if (m->kv.mask_zeros > n) m->kv.mask_zeros = -1;
  if (!m->buf.direct_io) m->kv.mask_zeros = -1;
  memcpy(m->kv.tokens, ids, sizeof(int32_t) * (size_t)n);
  if (need_head) {
    if ((rc = run_head(m, mem_at(hidden, (size_t)(n - 1) * m->buf.hidden_bytes, m->buf.hidden_bytes), n, next_token)))
      return rc;
  } else {
    m->kv.token_on_device = 0;
    if ((rc = sync_device(m))) return rc;
  }
  m->kv.position = n;
  return TPC_OK;
}

/* Measured wall time of decode steps and fresh prefills (per stage), for
 * choosing between appending and re-prefilling.  Until measured, assume a
 * prefill costs as much as 8 decode steps (roughly what 7B models show on
 * BM1684X with S = 512; the simulator is nearer 5). */
static double decode_cost(const tpc_model *m) { return m->stats.cost_decode_us > 0 ? m->stats.cost_decode_us : 1.0; }
static double prefill_cost(const tpc_model *m, int n) {
  int st = m->d.is_dynamic ? 0 : pick_stage(m->net.block[0], n);
  double c = st >= 0 && st < 8 ? m->stats.cost_prefill_us[st] : 0;
  return c > 0 ? c : 8.0 * decode_cost(m);
}

static void note_prefill_cost(tpc_model *m, int n) {
  int st = m->d.is_dynamic ? 0 : pick_stage(m->net.block[0], n);
  if (st >= 0 && st < 8) m->stats.cost_prefill_us[st] = m->stats.timing.total_us;
}

int tpc_prefill(tpc_model *m, const int *ids, int n, int *next_token) {
  if (!m) return TPC_E_ARG;
  if (m->share.on) return share_prefill(m, ids, n, 0, next_token);
  int none = 0, rc0 = ids && n >= 1 ? image_checks(m, n, &none, 0) : TPC_OK;
  if (rc0) return rc0;
  m->vis.seq_img_pos = m->vis.want_img_pos;
  m->vis.seq_img_gen = m->vis.img_gen;
  begin_call(m);
  m->kv.position = 0;
  int rc = prefill_impl(m, ids, n, 1, next_token);
  if (rc) m->kv.position = 0;
  end_call(m);
  if (!rc) note_prefill_cost(m, n);
  return rc;
}

/* Run chunk[0, c) at cache rows [start, start + c) through the block_kv
 * nets against the cached rows [0, start): the chunk's K/V rows land right
 * after them and *hidden is the last layer's output (c rows).  Rows at or
 * past start are never read: the nets take exactly `start` history rows and
 * mask causally inside the chunk.  The cache position is the caller's. */
int block_kv_layers(tpc_model *m, const int *chunk, int start, int c, bmapi_mem_t *hidden_out) {
  tpc_desc *d = &m->d;
  net_t emb = m->net.embedding;
  bmapi_tensor_t ein[2], eout[2], in[8], out[8];
  if (c < 1 || c > m->net.block_kv_len || start < 0 || start + c > d->kv_len)
    return fail(m, TPC_E_ARG, "a block_kv chunk of %d tokens at row %d does not fit (chunks hold 1..%d, the KV length is %d)",
                c, start, m->net.block_kv_len, d->kv_len);
  int rc, estage = emb->is_dynamic ? 0 : pick_stage(emb, c);
  if (estage < 0) return fail(m, TPC_E_MODEL, "embedding has no stage for %d tokens", c);
  own_tensors(emb, estage, ein, eout);
  int emb_rows = emb->is_dynamic ? c : ein[0].shape.dims[1];
  if (emb_rows > m->buf.ids_cap) return fail(m, TPC_E_MODEL, "embedding input longer than expected");
  if (emb->is_dynamic) set_len(&ein[0].shape, c);
  memset(m->buf.ids_buf, 0, sizeof(int32_t) * (size_t)m->buf.ids_cap);
  memcpy(m->buf.ids_buf, chunk, sizeof(int32_t) * (size_t)c);
  if ((rc = upload(m, ein[0].device_mem, 0, m->buf.ids_buf, sizeof(int32_t) * (size_t)emb_rows, "token ids")) ||
      (rc = launch(m, emb, ein, eout)))
    return rc;
  for (int i = 0; i < c; i++) m->buf.ids_buf[i] = start + i;
  bmapi_mem_t hidden = eout[0].device_mem, pos_mem;
  for (int i = 0; i < d->num_layers; i++) {
    net_t b = m->net.block_kv[i];
    own_tensors(b, 0, in, out);
    if (i == 0) {
      pos_mem = in[1].device_mem;
      if ((rc = upload(m, pos_mem, 0, m->buf.ids_buf, sizeof(int32_t) * (size_t)c, "position ids"))) return rc;
    }
    if (!m->buf.direct_io) {
      if ((rc = copy_d2d(m, in[0].device_mem, 0, hidden, 0, (size_t)c * m->buf.hidden_bytes, "hidden state")))
        return rc;
      hidden = in[0].device_mem;
      if (i > 0 && (rc = upload(m, in[1].device_mem, 0, m->buf.ids_buf, sizeof(int32_t) * (size_t)c, "position ids")))
        return rc;
      pos_mem = in[1].device_mem;
    }
    in[0].device_mem = hidden;
    set_len(&in[0].shape, c);
    in[1].device_mem = pos_mem;
    set_len(&in[1].shape, c);
    /* The net concatenates history and new K/V "by merge": it expects the
     * history in its own input buffer, so it is copied there, and the new
     * rows are copied back into the cache. */
    size_t hist = (size_t)start * m->buf.kv_row_bytes, rows = (size_t)c * m->buf.kv_row_bytes;
    if (hist > in[2].device_mem.size || hist > in[3].device_mem.size)
      return fail(m, TPC_E_MODEL, "%s holds fewer history rows than the %d cached ones", b->name, start);
    if ((rc = copy_d2d(m, in[2].device_mem, 0, m->buf.kv_k[i], 0, hist, "K history")) ||
        (rc = copy_d2d(m, in[3].device_mem, 0, m->buf.kv_v[i], 0, hist, "V history")))
      return rc;
    set_len(&in[2].shape, start);
    set_len(&in[3].shape, start);
    if ((rc = launch(m, b, in, out))) return rc;
    if ((rc = copy_d2d(m, m->buf.kv_k[i], hist, out[1].device_mem, 0, rows, "K cache")) ||
        (rc = copy_d2d(m, m->buf.kv_v[i], hist, out[2].device_mem, 0, rows, "V cache")))
      return rc;
    hidden = out[0].device_mem;
  }
  memcpy(m->kv.tokens + start, chunk, sizeof(int32_t) * (size_t)c);
  *hidden_out = hidden;
  return TPC_OK;
}

/* Prefill chunk ids[start, start + c) against the cache rows [0, start). */
static int block_kv_chunk(tpc_model *m, const int *ids, int start, int c, int need_head, int *next_token) {
  bmapi_mem_t hidden;
  int rc = block_kv_layers(m, ids + start, start, c, &hidden);
  if (rc) return rc;
  m->kv.position = start + c;
  if (need_head)
    return run_head(m, mem_at(hidden, (size_t)(c - 1) * m->buf.hidden_bytes, m->buf.hidden_bytes), start + c, next_token);
  m->kv.token_on_device = 0;
  return sync_device(m);
}

/* Feed ids[from, n) after the cached rows [0, from). */
static int append(tpc_model *m, const int *ids, int from, int n, int *next_token) {
  int rc = TPC_OK;
  m->kv.position = from;
  if (m->d.has_block_kv) {
    int chunk = m->net.block_kv_len;
    for (int s = from; s < n && !rc; s += chunk) {
      int c = n - s < chunk ? n - s : chunk;
      rc = block_kv_chunk(m, ids, s, c, s + c == n, next_token);
    }
    return rc;
  }
  m->kv.token_on_device = 0;
  for (int i = from; i < n && !rc; i++) rc = decode_impl(m, ids[i], i == n - 1, next_token);
  return rc;
}

int tpc_set_append_policy(tpc_model *m, int policy) {
  if (!m) return TPC_E_ARG;
  if (policy != TPC_APPEND_BY_COST && policy != TPC_APPEND_ALWAYS)
    return fail(m, TPC_E_ARG, "unknown append policy %d", policy);
  m->stats.append_policy = policy;
  return TPC_OK;
}

int tpc_prefill_reuse(tpc_model *m, const int *ids, int n, int *next_token) {
  if (!m) return TPC_E_ARG;
  if (m->share.on) return share_prefill(m, ids, n, 1, next_token);
  tpc_desc *d = &m->d;
  if (!ids || n < 1) return fail(m, TPC_E_ARG, "prefill needs at least one token");
  if (n > d->kv_len)
    return fail(m, TPC_E_TOO_LONG, "prompt of %d tokens is longer than this bmodel's KV length %d", n, d->kv_len);
  int lcp = 0, limit = m->kv.position < n ? m->kv.position : n;
  while (lcp < limit && m->kv.tokens[lcp] == ids[lcp]) lcp++;
  int plcp = 0, plimit = m->kv.prefix_len < n ? m->kv.prefix_len : n;
  while (plcp < plimit && m->kv.prefix_tokens[plcp] == ids[plcp]) plcp++;
  int restore = plcp > lcp; /* the pinned copy holds more of this prompt than the cache */
  /* Pinned rows were computed text-only: they stand for rows before an image token only. */
  if (restore && m->vis.want_img_pos >= 0 && plcp > m->vis.want_img_pos) restore = 0;
  if (restore) lcp = plcp;
  if (lcp == n) lcp = n - 1; /* the last prompt token is fed again for its logits */
  int rc_img = image_checks(m, n, &lcp, restore);
  if (rc_img) return rc_img;
  /* A fresh start prefills up to seq_len tokens and appends the rest.
   * Appending costs one decode step per token (or one block_kv launch per
   * chunk, always cheaper than recomputing); a static prefill costs about
   * the same whatever the length.  Pick the cheaper by measured costs. */
  int fresh_len = n <= d->seq_len ? n : d->seq_len;
  double cost_fresh = prefill_cost(m, fresh_len) + (double)(n - fresh_len) * decode_cost(m);
  int use_append = lcp > 0 && (d->has_block_kv || m->stats.append_policy == TPC_APPEND_ALWAYS ||
                                (double)(n - lcp) * decode_cost(m) < cost_fresh);
  if (m->vis.want_img_pos >= fresh_len && !use_append)
    return fail(m, TPC_E_ARG, "the image token at position %d must lie within the first %d tokens (the prefill length)",
                m->vis.want_img_pos, fresh_len);
  m->vis.seq_img_pos = m->vis.want_img_pos;
  m->vis.seq_img_gen = m->vis.img_gen;
  begin_call(m);
  int rc;
  if (use_append) {
    rc = restore ? restore_prefix(m, lcp) : TPC_OK;
    if (!rc) rc = append(m, ids, lcp, n, next_token);
    m->stats.timing.reused = lcp;
  } else {
    m->kv.position = 0;
    rc = prefill_impl(m, ids, fresh_len, fresh_len == n, next_token);
    if (!rc && fresh_len < n) rc = append(m, ids, fresh_len, n, next_token);
    if (!rc && fresh_len == n) {
      end_call(m);
      note_prefill_cost(m, n);
      return rc;
    }
  }
  if (rc) {
    m->kv.position = 0; /* the cache holds a partial state: forget it */
  }
  end_call(m);
  return rc;
}

/* A decode token's hidden state, through embedding_cache, the embedding's
 * 1-row stage, or the embedding's prefill stage with the token at row 0
 * (roles.c chooses). */
static int embed_decode_token(tpc_model *m, int token, int p, bmapi_mem_t *hidden) {
  net_t e = m->net.decode_embed;
  bmapi_tensor_t ein[2], eout[2];
  int rc;
  own_tensors(e, m->net.decode_stage, ein, eout);
  if (e->is_dynamic) set_len(&ein[0].shape, 1);
  if (!(m->kv.token_on_device && token == m->kv.last_token)) {
    int rows = m->d.decode_embed == TPC_EMBED_DECODE_PREFILL ? ein[0].shape.dims[1] : 1;
    if (rows > m->buf.ids_cap) return fail(m, TPC_E_MODEL, "embedding input longer than expected");
    memset(m->buf.ids_buf, 0, sizeof(int32_t) * (size_t)rows);
    m->buf.ids_buf[0] = token;
    if ((rc = upload(m, ein[0].device_mem, 0, m->buf.ids_buf, sizeof(int32_t) * (size_t)rows, "token id")))
      return rc;
  }
  m->kv.token_on_device = 0;
  int pos_rows = m->d.decode_embed == TPC_EMBED_DECODE_PREFILL ? ein[0].shape.dims[1] : 1;
  if ((rc = upload_positions(m, ein, p, 1, pos_rows)) || (rc = launch(m, e, ein, eout))) return rc;
  *hidden = mem_at(eout[0].device_mem, 0, m->buf.hidden_bytes);
  return TPC_OK;
}

/* The decode mask of the rows layouts: the share-cache layout's has a gap
 * between the shared and the unshared rows. */
static int decode_mask(tpc_model *m, bmapi_mem_t mem, int p) {
  return m->share.on ? share_decode_mask(m, mem, p) : update_decode_mask(m, mem, p);
}

/* One self-attention decode layer at position p.  pos_mem / mask_mem are
 * layer 0's (io_alone row layout, shared by reference) or, sliding, our own
 * decode mask. */
static int decode_layer(tpc_model *m, int i, int p, bmapi_mem_t pos_mem, bmapi_mem_t mask_mem, bmapi_mem_t *hidden) {
  const shim_nets *nt = &m->net;
  net_t c = nt->block_cache[i];
  bmapi_tensor_t in[8], out[8];
  int32_t pos = p;
  int rc, sliding = m->d.kv_layout == TPC_KV_SLIDING;
  own_tensors(c, nt->cache_stage, in, out);
  in[nt->cache_k].device_mem = m->buf.kv_k[i];
  if (nt->cache_v >= 0) in[nt->cache_v].device_mem = m->buf.kv_v[i];
  if (m->buf.direct_io) {
    if (i == 0 && !sliding) {
      if ((rc = upload(m, pos_mem, 0, &pos, 4, "position id"))) return rc;
      if ((rc = decode_mask(m, mask_mem, p))) return rc;
    }
    in[0].device_mem = *hidden;
    if (nt->cache_pos >= 0) in[nt->cache_pos].device_mem = pos_mem;
    in[nt->cache_mask].device_mem = mask_mem;
    if (!sliding) {
      out[1].device_mem = kv_view(m, m->buf.kv_k[i], kv_row(m, p));
      out[2].device_mem = kv_view(m, m->buf.kv_v[i], kv_row(m, p));
    }
  } else {
    if ((rc = copy_d2d(m, in[0].device_mem, 0, *hidden, 0, m->buf.hidden_bytes, "hidden state"))) return rc;
    if (nt->cache_pos >= 0 && (rc = upload(m, in[nt->cache_pos].device_mem, 0, &pos, 4, "position id"))) return rc;
    if (sliding) {
      in[nt->cache_mask].device_mem = mask_mem;
    } else {
      m->kv.mask_zeros = -1;
      if ((rc = decode_mask(m, in[nt->cache_mask].device_mem, p))) return rc;
    }
  }
  if ((rc = launch(m, c, in, out)) || (rc = kv_keep_decode(m, i, out, p))) return rc;
  *hidden = out[0].device_mem;
  return TPC_OK;
}

int decode_impl(tpc_model *m, int token, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  int p = m->kv.position, row = kv_row(m, p), rc; /* row: p, except in the share-cache layout */
  if (p <= 0) return fail(m, TPC_E_ARG, "decode before prefill");
  if (row >= d->kv_len)
    return fail(m, TPC_E_FULL, "the context is full: all %d KV positions are used", d->kv_len);
  if (m->md.on) return md_decode(m, token, need_head, next_token);

  bmapi_mem_t hidden, pos_mem = {0}, mask_mem;
  if ((rc = kv_align(m, p)) || (rc = embed_decode_token(m, token, p, &hidden))) return rc;
  const bmapi_stage_t *st0 = &m->net.block_cache[0]->stages[m->net.cache_stage];
  if (m->net.cache_pos >= 0) pos_mem = st0->input_mems[m->net.cache_pos];
  mask_mem = st0->input_mems[m->net.cache_mask];
  if (d->kv_layout == TPC_KV_SLIDING) {
    mask_mem = m->buf.slide_mask;
    if ((rc = update_sliding_mask(m, p))) return rc;
  }
  for (int i = 0; i < d->num_layers; i++) {
    if (m->vis.is_cross && m->vis.is_cross[i]) {
      if (m->vis.seq_img_pos < 0) continue; /* text only */
      if ((rc = cross_decode_layer(m, i, &hidden))) return rc;
      continue;
    }
    if ((rc = decode_layer(m, i, p, pos_mem, mask_mem, &hidden))) return rc;
  }
  m->kv.tokens[p] = token;
  if (need_head) {
    if ((rc = run_head(m, mem_at(hidden, 0, m->buf.hidden_bytes), p + 1, next_token))) return rc;
  } else if ((rc = sync_device(m))) {
    return rc;
  }
  m->kv.position = p + 1;
  return TPC_OK;
}

int tpc_decode(tpc_model *m, int token, int *next_token) {
  if (!m) return TPC_E_ARG;
  begin_call(m);
  int rc = decode_impl(m, token, 1, next_token);
  end_call(m);
  if (!rc) m->stats.cost_decode_us = m->stats.cost_decode_us > 0 ? 0.8 * m->stats.cost_decode_us + 0.2 * m->stats.timing.total_us
                                                     : m->stats.timing.total_us;
  return rc;
}
