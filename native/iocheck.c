/* iocheck.c - every buffer the shim writes into, checked once at open: the
 * input exists, its dtype and byte size are what the role expects.  A
 * mismatch is a one-line refusal at open, never a write past a buffer. */
#include "shim_internal.h"

#define ANY_HALF -2 /* bf16 or f16 */
#define ANY_DTYPE -1

static const char *dtype_name(int dt) {
  static const char *const names[] = {"f32", "f16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "bf16"};
  return dt >= 0 && dt <= 8 ? names[dt] : "?";
}

/* Input (or output) k of net n at `stage` must exist, have dtype `dtype`
 * and hold at least `bytes`. */
static int need(tpc_model *m, net_t n, int stage, int is_out, int k, int dtype, size_t bytes, const char *what) {
  int count = is_out ? n->output_num : n->input_num;
  if (k >= count)
    return fail(m, TPC_E_MODEL, "%s has no %s %d (%s): it has %d", n->name, is_out ? "output" : "input", k, what,
                count);
  int dt = is_out ? n->output_dtypes[k] : n->input_dtypes[k];
  int ok = dtype == ANY_DTYPE || dt == dtype || (dtype == ANY_HALF && (dt == BMAPI_BF16 || dt == BMAPI_F16));
  if (!ok)
    return fail(m, TPC_E_MODEL, "%s %s %d (%s) is %s; the shim writes %s", n->name, is_out ? "output" : "input", k,
                what, dtype_name(dt), dtype == ANY_HALF ? "bf16/f16" : dtype_name(dtype));
  bmapi_mem_t mem = is_out ? n->stages[stage].output_mems[k] : n->stages[stage].input_mems[k];
  if ((size_t)mem.size < bytes)
    return fail(m, TPC_E_MODEL, "%s %s %d (%s) holds %u bytes; the shim needs %zu", n->name,
                is_out ? "output" : "input", k, what, mem.size, bytes);
  return TPC_OK;
}

int need_io(tpc_model *m, net_t n, int stage, int is_out, int k, int dtype, size_t bytes, const char *what) {
  return need(m, n, stage, is_out, k, dtype, bytes, what);
}

static size_t io_bytes(net_t n, int stage, int is_out, int k) {
  const bmapi_shape_t *s = is_out ? &n->stages[stage].output_shapes[k] : &n->stages[stage].input_shapes[k];
  return shape_count(s, 0) * (size_t)dtype_size(is_out ? n->output_dtypes[k] : n->input_dtypes[k]);
}

/* Token ids (and learned positions) in, hidden states out, at every stage. */
static int check_embeddings(tpc_model *m) {
  net_t e = m->net.embedding, de = m->net.decode_embed;
  int rc, lp = m->d.learned_positions;
  for (int s = 0; s < e->stage_num; s++) {
    size_t rows = (size_t)e->stages[s].input_shapes[0].dims[1];
    if ((rc = need(m, e, s, 0, 0, BMAPI_INT32, rows * 4, "input_ids")) ||
        (lp && (rc = need(m, e, s, 0, 1, BMAPI_INT32, rows * 4, "input_pos"))) ||
        (rc = need(m, e, s, 1, 0, m->d.float_dtype, rows * m->buf.hidden_bytes, "hidden states")))
      return rc;
  }
  int ds = m->net.decode_stage;
  size_t rows = m->d.decode_embed == TPC_EMBED_DECODE_PREFILL ? (size_t)de->stages[ds].input_shapes[0].dims[1] : 1;
  if ((rc = need(m, de, ds, 0, 0, BMAPI_INT32, rows * 4, "decode input_ids"))) return rc;
  return lp ? need(m, de, ds, 0, 1, BMAPI_INT32, rows * 4, "decode input_pos") : TPC_OK;
}

/* The masks the shim writes: half floats, or f32 for the sliding layout
 * (WizardCoder's all-f32 IO). */
static int mask_dtype(const tpc_model *m) { return m->d.mask_dtype == BMAPI_F32 ? BMAPI_F32 : ANY_HALF; }

/* A self-attention prefill layer at every stage: hidden rows in (copied in
 * basic mode), positions (unless learned), the mask, and K/V rows out
 * (written straight into the cache with io_alone; one K|V output when
 * sliding). */
static int check_block(tpc_model *m, net_t b) {
  tpc_desc *d = &m->d;
  int rc, kp = m->net.block_pos, km = m->net.block_mask, two = m->net.cache_v >= 0;
  for (int s = 0; s < b->stage_num; s++) {
    size_t rows = (size_t)b->stages[s].input_shapes[0].dims[1];
    size_t kv = rows * m->buf.kv_row_bytes;
    if ((rc = need(m, b, s, 0, 0, d->float_dtype, rows * m->buf.hidden_bytes, "hidden states")) ||
        (kp >= 0 && (rc = need(m, b, s, 0, kp, BMAPI_INT32, rows * 4, "position_ids"))) ||
        (km >= 0 && (rc = need(m, b, s, 0, km, mask_dtype(m), io_bytes(b, s, 0, km),
                               "attention_mask"))) ||
        (rc = need(m, b, s, 1, 0, d->float_dtype, rows * m->buf.hidden_bytes, "hidden states")) ||
        (rc = need(m, b, s, 1, 1, ANY_DTYPE, kv, two ? "new K rows" : "new K|V rows")) ||
        (two && (rc = need(m, b, s, 1, 2, ANY_DTYPE, kv, "new V rows"))))
      return rc;
    if (io_bytes(b, s, 1, 1) > (size_t)d->kv_len * m->buf.kv_row_bytes)
      return fail(m, TPC_E_MODEL, "%s returns %zu bytes of K rows, more than the %d-row cache holds", b->name,
                  io_bytes(b, s, 1, 1), d->kv_len);
  }
  return TPC_OK;
}

/* A self-attention decode layer: one hidden row, its position (unless
 * learned), the L+1 mask (our own buffer when sliding), the history (the
 * cache itself with io_alone), and out one new K/V row, or when sliding
 * the L+1-row window with the new row (also used as scratch by kv_align). */
static int check_block_cache(tpc_model *m, net_t c) {
  tpc_desc *d = &m->d;
  const shim_nets *nt = &m->net;
  int s = nt->cache_stage, sliding = d->kv_layout == TPC_KV_SLIDING, rc;
  size_t row = m->buf.kv_row_bytes, hist = (size_t)d->kv_len * row, want = sliding ? hist + row : row;
  if ((rc = need(m, c, s, 0, 0, d->float_dtype, m->buf.hidden_bytes, "hidden state")) ||
      (nt->cache_pos >= 0 && (rc = need(m, c, s, 0, nt->cache_pos, BMAPI_INT32, 4, "position_ids"))) ||
      (rc = need(m, c, s, 0, nt->cache_mask, d->mask_dtype, (size_t)(d->kv_len + 1) * dtype_size(d->mask_dtype),
                 "attention_mask")) ||
      (rc = need(m, c, s, 0, nt->cache_k, ANY_DTYPE, hist, sliding ? "past_cache" : "history_k")) ||
      (nt->cache_v >= 0 && (rc = need(m, c, s, 0, nt->cache_v, ANY_DTYPE, hist, "history_v"))) ||
      (rc = need(m, c, s, 1, 0, d->float_dtype, m->buf.hidden_bytes, "hidden state")) ||
      (rc = need(m, c, s, 1, 1, ANY_DTYPE, want, sliding ? "the new K|V window" : "new K row")) ||
      (!sliding && (rc = need(m, c, s, 1, 2, ANY_DTYPE, row, "new V row"))))
    return rc;
  if (io_bytes(c, s, 1, 1) != want)
    return fail(m, TPC_E_MODEL, "%s returns %zu bytes of K rows; the shim expects %zu (%s)", c->name,
                io_bytes(c, s, 1, 1), want, sliding ? "the window of L rows + 1" : "one cache row");
  if (sliding && (io_bytes(c, s, 0, nt->cache_k) != hist || c->output_dtypes[1] != c->input_dtypes[nt->cache_k]))
    return fail(m, TPC_E_MODEL, "%s's past_cache is not %d rows of the returned window's dtype", c->name, d->kv_len);
  return TPC_OK;
}

/* A block_kv layer (chunks against the cache, step.c): up to block_kv_len
 * hidden rows in (copied in basic mode) and out, their positions, and the
 * chunk's K/V rows out (copied into the cache).  The cached rows copied into
 * its history inputs are checked per chunk against those buffers' sizes. */
static int check_block_kv(tpc_model *m, net_t b) {
  tpc_desc *d = &m->d;
  size_t rows = (size_t)m->net.block_kv_len;
  int rc;
  if ((rc = need(m, b, 0, 0, 0, d->float_dtype, rows * m->buf.hidden_bytes, "hidden states")) ||
      (rc = need(m, b, 0, 0, 1, BMAPI_INT32, rows * 4, "position_ids")) ||
      (rc = need(m, b, 0, 0, 2, ANY_DTYPE, 0, "history_k")) || (rc = need(m, b, 0, 0, 3, ANY_DTYPE, 0, "history_v")) ||
      (rc = need(m, b, 0, 1, 0, d->float_dtype, rows * m->buf.hidden_bytes, "hidden states")) ||
      (rc = need(m, b, 0, 1, 1, ANY_DTYPE, rows * m->buf.kv_row_bytes, "new K rows")) ||
      (rc = need(m, b, 0, 1, 2, ANY_DTYPE, rows * m->buf.kv_row_bytes, "new V rows")))
    return rc;
  return TPC_OK;
}

static int check_heads(tpc_model *m) {
  tpc_desc *d = &m->d;
  net_t lm = m->net.lm_head, g = m->net.greedy_head, sh = m->net.sample_head;
  size_t out = io_bytes(lm, 0, 1, 0);
  int rc;
  if ((rc = need(m, lm, 0, 0, 0, d->float_dtype, m->buf.hidden_bytes, "hidden state")) ||
      (rc = need(m, lm, 0, 1, 0, ANY_DTYPE, d->lm_head_kind == 1 ? 4 : (size_t)d->vocab_size * dtype_size(d->logits_dtype),
                 d->lm_head_kind == 1 ? "token" : "logits")))
    return rc;
  if (g && ((rc = need(m, g, 0, 0, 0, d->logits_dtype, out, "logits")) || (rc = need(m, g, 0, 1, 0, BMAPI_INT32, 4, "token"))))
    return rc;
  if (!sh) return TPC_OK;
  const int *r = m->net.sample_in;
  size_t ids = io_bytes(sh, 0, 0, r[TPC_SAMPLE_IDS]);
  if ((rc = need(m, sh, 0, 0, r[TPC_SAMPLE_LOGITS], d->logits_dtype, out, "logits")) ||
      (rc = need(m, sh, 0, 0, r[TPC_SAMPLE_IDS], BMAPI_INT32, ids, "input_ids")))
    return rc;
  for (int k = TPC_SAMPLE_PENALTY; k <= TPC_SAMPLE_TOP_P; k++)
    if (r[k] >= 0 && (rc = need(m, sh, 0, 0, r[k], k == TPC_SAMPLE_TOP_K ? BMAPI_INT32 : BMAPI_F32, 4, "a setting")))
      return rc;
  if ((rc = need(m, sh, 0, 1, 0, BMAPI_F32, 4, "probabilities")) || (rc = need(m, sh, 0, 1, 1, BMAPI_INT32, 4, "ids")))
    return rc;
  return TPC_OK;
}

/* One device: every net the shim writes into (vision layers check their
 * own in vision.c; several devices are laid out by md_plan.c). */
int check_io(tpc_model *m) {
  int rc;
  if ((rc = check_embeddings(m)) || (rc = check_heads(m))) return rc;
  for (int i = 0; i < m->d.num_layers; i++) {
    if (m->vis.is_cross && m->vis.is_cross[i]) continue;
    if ((rc = check_block(m, m->net.block[i])) || (rc = check_block_cache(m, m->net.block_cache[i])) ||
        (m->d.has_block_kv && (rc = check_block_kv(m, m->net.block_kv[i]))))
      return rc;
  }
  return check_share_io(m);
}
