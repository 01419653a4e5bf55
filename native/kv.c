/* kv.c - the KV cache and host scratch: allocation, reset, rewind, position. */
#include "shim_internal.h"

/* Host scratch: ids/positions (as long as the longest embedding input; with
 * all_inputs every input of it counts), the tokens of the cache, and the
 * sampler's arrays for logit-returning builds. */
int alloc_host_scratch(tpc_model *m, int all_inputs) {
  tpc_desc *d = &m->d;
  net_t e = m->net.embedding;
  m->buf.ids_cap = d->seq_len;
  for (int s = 0; s < e->stage_num; s++)
    for (int k = 0; k < (all_inputs ? e->input_num : 1); k++)
      if (e->stages[s].input_shapes[k].dims[1] > m->buf.ids_cap) m->buf.ids_cap = e->stages[s].input_shapes[k].dims[1];
  net_t sh = m->net.sample_head; /* its penalty window is staged in ids_buf too */
  if (sh && (int)shape_count(&sh->stages[0].input_shapes[m->net.sample_in[TPC_SAMPLE_IDS]], 0) > m->buf.ids_cap)
    m->buf.ids_cap = (int)shape_count(&sh->stages[0].input_shapes[m->net.sample_in[TPC_SAMPLE_IDS]], 0);
  m->buf.ids_buf = calloc((size_t)m->buf.ids_cap, sizeof(int32_t));
  m->kv.tokens = calloc((size_t)d->kv_len, sizeof(int32_t));
  if (!m->buf.ids_buf || !m->kv.tokens) return fail(m, TPC_E_NOMEM, "out of host memory");
  if (d->lm_head_kind == 2) {
    m->smp.logits = calloc((size_t)d->vocab_size, sizeof(float));
    m->smp.logits_raw = calloc((size_t)d->vocab_size, 4);
    m->smp.probs = calloc((size_t)d->vocab_size, sizeof(float));
    m->smp.order = calloc((size_t)d->vocab_size, sizeof(int));
    if (!m->smp.logits || !m->smp.logits_raw || !m->smp.probs || !m->smp.order)
      return fail(m, TPC_E_NOMEM, "out of host memory");
  }
  return TPC_OK;
}

/* The KV cache (io_alone: block_cache's own history buffers; basic: ours)
 * and the host scratch of a one-device model. */
int alloc_state(tpc_model *m) {
  tpc_desc *d = &m->d;
  int L = d->num_layers, rc;
  /* io_alone nets keep their IO apart, unless the bmodel was loaded into
   * caller memory: then every basic-mode net's IO sits in one shared
   * activation area (one net's output is the next one's scratch), and the
   * copying discipline of basic mode is the safe one. */
  m->buf.direct_io = d->addr_mode == 1 && !m->shared_neuron;
  m->buf.kv_k = calloc((size_t)L, sizeof(bmapi_mem_t));
  m->buf.kv_v = calloc((size_t)L, sizeof(bmapi_mem_t));
  if (!m->buf.kv_k || !m->buf.kv_v) return fail(m, TPC_E_NOMEM, "out of host memory");
  if ((rc = alloc_host_scratch(m, d->learned_positions))) return rc;
  size_t bytes = (size_t)d->kv_len * m->buf.kv_row_bytes;
  int ck = m->net.cache_k, cv = m->net.cache_v; /* cv -1: one combined K|V cache (sliding layout) */
  for (int i = 0; i < L; i++) {
    if (m->vis.is_cross && m->vis.is_cross[i]) {
      int rc = alloc_cross_kv(m, i);
      if (rc) return rc;
      continue;
    }
    if (m->buf.direct_io) {
      m->buf.kv_k[i] = m->net.block_cache[i]->stages[m->net.cache_stage].input_mems[ck];
      if (cv >= 0) m->buf.kv_v[i] = m->net.block_cache[i]->stages[m->net.cache_stage].input_mems[cv];
    } else {
      m->buf.own_kv = 1;
      if (RT.malloc_device_byte(H(m), &m->buf.kv_k[i], (unsigned int)bytes) != 0 ||
          (cv >= 0 && RT.malloc_device_byte(H(m), &m->buf.kv_v[i], (unsigned int)bytes) != 0))
        return fail(m, TPC_E_NOMEM, "not enough device memory for the KV cache (%lld MB)",
                    d->kv_cache_bytes >> 20);
    }
  }
  /* The sliding layout's decode mask changes one entry a step: it lives in
   * our own buffer (never in a net's shared IO), so it survives launches. */
  if (d->kv_layout == TPC_KV_SLIDING &&
      (rc = dev_alloc(m, &m->buf.slide_mask, (size_t)(d->kv_len + 1) * dtype_size(d->mask_dtype), "the decode mask")))
    return rc;
  return alloc_vision(m);
}

/* Where position `position`'s row starts in a layer's cache: at its index,
 * or in the sliding layout `slide_rows` rows from the window's end. */
size_t kv_row_offset(const tpc_model *m, int position) {
  int row = m->d.kv_layout == TPC_KV_SLIDING ? m->d.kv_len - m->kv.slide_rows + position : position;
  return (size_t)row * m->buf.kv_row_bytes;
}

/* Layer `layer`'s prefill wrote rows [0, n) of its K/V outputs (out[1],
 * out[2]; one K|V output when sliding): into the cache, unless the net
 * wrote them there itself (io_alone row layout).  Sliding: they become the
 * window's last n rows. */
int kv_keep_prefill(tpc_model *m, int layer, const bmapi_tensor_t *out, int n) {
  size_t bytes = (size_t)n * m->buf.kv_row_bytes;
  if (m->d.kv_layout == TPC_KV_SLIDING) {
    m->kv.slide_rows = n;
    return copy_d2d(m, m->buf.kv_k[layer], kv_row_offset(m, 0), out[1].device_mem, 0, bytes, "K|V cache rows");
  }
  if (m->buf.direct_io) return TPC_OK;
  int rc = copy_d2d(m, m->buf.kv_k[layer], 0, out[1].device_mem, 0, bytes, "K cache");
  return rc ? rc : copy_d2d(m, m->buf.kv_v[layer], 0, out[2].device_mem, 0, bytes, "V cache");
}

/* After layer `layer`'s decode step at position p: the new row into the
 * cache (basic row layout; io_alone nets wrote it there), or, sliding, the
 * net's L + 1 returned rows less the first become the window. */
int kv_keep_decode(tpc_model *m, int layer, const bmapi_tensor_t *out, int p) {
  size_t row = m->buf.kv_row_bytes;
  if (m->d.kv_layout == TPC_KV_SLIDING) {
    m->kv.slide_rows = p + 1;
    return copy_d2d(m, m->buf.kv_k[layer], 0, out[1].device_mem, row, (size_t)m->d.kv_len * row, "K|V cache window");
  }
  if (m->buf.direct_io) return TPC_OK;
  size_t at = (size_t)kv_row(m, p) * row; /* p, except in the share-cache layout */
  int rc = copy_d2d(m, m->buf.kv_k[layer], at, out[1].device_mem, 0, row, "K cache");
  return rc ? rc : copy_d2d(m, m->buf.kv_v[layer], at, out[2].device_mem, 0, row, "V cache");
}

/* Sliding layout: before a decode step at position p, the rows of positions
 * [0, p) must be the window's last p.  After a rewind (a shorter shared
 * prefix) they sit higher up: move them down, through the decode net's
 * output buffer (free between launches) since source and target overlap. */
int kv_align(tpc_model *m, int p) {
  if (m->d.kv_layout != TPC_KV_SLIDING || m->kv.slide_rows == p) return TPC_OK;
  if (p > m->kv.slide_rows)
    return fail(m, TPC_E_ARG, "the KV window holds %d rows, fewer than position %d", m->kv.slide_rows, p);
  size_t bytes = (size_t)p * m->buf.kv_row_bytes, from = kv_row_offset(m, 0);
  size_t to = (size_t)(m->d.kv_len - p) * m->buf.kv_row_bytes;
  int rc = TPC_OK;
  for (int i = 0; i < m->d.num_layers && !rc && bytes; i++) {
    bmapi_mem_t tmp = m->net.block_cache[i]->stages[m->net.cache_stage].output_mems[1];
    rc = copy_d2d(m, tmp, 0, m->buf.kv_k[i], from, bytes, "K|V rows to move");
    if (!rc) rc = copy_d2d(m, m->buf.kv_k[i], to, tmp, 0, bytes, "K|V rows moved");
  }
  if (!rc) m->kv.slide_rows = p;
  return rc;
}

int tpc_reset(tpc_model *m) {
  if (!m) return TPC_E_ARG;
  begin_call(m);
  int rc = TPC_OK;
  /* Masked positions still enter the arithmetic: leftover bits that read as
   * NaN/Inf would poison every answer, so the cache starts zeroed. */
  if (m->md.on) rc = md_reset(m);
  for (int i = 0; i < m->d.num_layers && !rc && !m->md.on; i++) {
    rc = zero(m, m->buf.kv_k[i], "the K cache");
    if (!rc && m->buf.kv_v[i].size) rc = zero(m, m->buf.kv_v[i], "the V cache");
  }
  if (!rc && !m->md.on) rc = sync_device(m);
  m->kv.position = 0;
  m->kv.slide_rows = 0;
  m->kv.slide_mask_rows = -1;
  m->kv.mask_zeros = -1;
  m->kv.token_on_device = 0;
  end_call(m);
  return rc;
}

int tpc_position(const tpc_model *m) { return m ? m->kv.position : 0; }

int tpc_rewind(tpc_model *m, int position) {
  if (!m || position < 0) return TPC_E_ARG;
  if (position < m->kv.position) m->kv.position = position;
  if (position < m->share.shared) m->share.shared = position; /* later rows follow at SHARE (share.c) */
  return TPC_OK;
}

int tpc_last_timing(const tpc_model *m, tpc_timing *out) {
  if (!m || !out) return TPC_E_ARG;
  *out = m->stats.timing;
  return TPC_OK;
}
