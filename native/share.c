/* share.c - LLM-TPU's share-cache layout (models/Qwen1_5/share_cache_demo).
 *
 * Three lengths: SHARE (block_N's rows), UNSHARE (block_unshare_N's rows)
 * and the KV length L (block_cache_N's history), L >= SHARE + UNSHARE.
 * A prompt is cut into a shared part of s <= SHARE tokens and the rest:
 *   shared part   embedding + block_N over SHARE rows (prefill_impl, the
 *                 usual causal prefill), K/V at cache rows [0, s);
 *   unshared part embedding_unshare + block_unshare_N over UNSHARE rows, the
 *                 first SHARE cache rows as history, mask [UNSHARE,
 *                 SHARE+UNSHARE] (row i sees [0, s) and SHARE + [0, i]),
 *                 positions s.., K/V at cache rows SHARE + [0, u);
 *   decode        the token at position p = s + k sits at row SHARE + k; its
 *                 mask sees [0, s), SHARE + [0, k) and the last entry.
 * (The demo's own decode step shows one row more and writes one row further
 * on: an off-by-one that attends to a zero row.  This is transformers'
 * computation.)
 *
 * In tpuchat's terms the shared part is the pinned prefix (tpc_pin_prefix,
 * --prefix-file): a prompt that starts with it runs only the unshared part.
 * Any other prompt is cut the same way with its own first SHARE tokens as
 * the shared part, so every prompt that fits gets right tokens; one that
 * does not fit is refused in one line. */
#include "shim_internal.h"

#define ANY_DTYPE -1 /* need_io: any dtype */

/* Row of the token at position p. */
int kv_row(const tpc_model *m, int p) {
  if (!m->share.on || p < m->share.shared) return p;
  return m->share.share_rows + (p - m->share.shared);
}

static int layer_net(tpc_model *m, const char *fmt, int i, net_t *out) {
  char name[64];
  snprintf(name, sizeof name, fmt, i);
  if (!(*out = find_net(m, name)))
    return fail(m, TPC_E_MODEL, "this share-cache bmodel has block_unshare_0 but no %s", name);
  return TPC_OK;
}

/* After the roles are found: the unshared nets and the three lengths. */
int describe_share(tpc_model *m) {
  tpc_desc *d = &m->d;
  shim_share *sh = &m->share;
  if (m->roles.convention != TPC_CONV_SHARE_CACHE) return TPC_OK;
  if (d->num_device > 1) return fail(m, TPC_E_MODEL, "multi-device share-cache bmodels are not supported");
  if (d->num_stages != 1)
    return fail(m, TPC_E_MODEL, "this share-cache bmodel's block_0 has %d stages; the layout has one", d->num_stages);
  /* compile.sh --dynamic 1 makes block_N dynamic.  Not run: the fixture's dynamic block_N
   * (seed_share.py --dynamic) kills the simulator's firmware at every length (TPU-MLIR 1.30.2:
   * a broadcast assert below the full length, "cannot find local tensor node" at it). */
  if (d->is_dynamic)
    return fail(m, TPC_E_MODEL, "this is the --dynamic 1 build of the share-cache layout, which tpuchat does not run "
                "yet (its dynamic block_N could not be checked); use the static build");
  if (!(sh->embed = find_net(m, "embedding_unshare")))
    return fail(m, TPC_E_MODEL, "this share-cache bmodel has block_unshare_0 but no embedding_unshare");
  if (!(sh->block = calloc((size_t)d->num_layers, sizeof(net_t)))) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < d->num_layers; i++) {
    int rc = layer_net(m, "block_unshare_%d", i, &sh->block[i]);
    if (rc) return rc;
  }
  net_t u0 = sh->block[0];
  if (u0->input_num != 5 || u0->output_num < 3 || u0->stage_num != 1 || u0->is_dynamic)
    return fail(m, TPC_E_MODEL, "%s has %d inputs, %d outputs, %d stages; want one static stage of hidden, "
                "position_ids, attention_mask, history_k, history_v -> hidden, K, V", u0->name, u0->input_num,
                u0->output_num, u0->stage_num);
  sh->share_rows = d->seq_len;
  sh->unshare_rows = u0->stages[0].input_shapes[0].dims[1];
  int hist = u0->stages[0].input_shapes[3].dims[1];
  if (hist != sh->share_rows || sh->share_rows + sh->unshare_rows > d->kv_len)
    return fail(m, TPC_E_MODEL, "share-cache lengths do not fit: block_0 %d rows, %s %d rows over a %d-row "
                "history, KV length %d", sh->share_rows, u0->name, sh->unshare_rows, hist, d->kv_len);
  if (!(sh->host = calloc((size_t)sh->unshare_rows * 2, sizeof(int32_t)))) /* ids, then positions */
    return fail(m, TPC_E_NOMEM, "out of host memory");
  snprintf(d->convention, sizeof d->convention, "%.40s (share %d, unshare %d)", m->roles.name, sh->share_rows,
           sh->unshare_rows); /* what `tpuchat info` names */
  sh->on = 1;
  return TPC_OK;
}

/* Every buffer the unshared part writes (iocheck.c's rules). */
int check_share_io(tpc_model *m) {
  shim_share *sh = &m->share;
  if (!sh->on) return TPC_OK;
  size_t u = (size_t)sh->unshare_rows, s = (size_t)sh->share_rows, hb = m->buf.hidden_bytes, kb = m->buf.kv_row_bytes;
  int rc, ht = m->d.float_dtype;
  if ((rc = need_io(m, sh->embed, 0, 0, 0, BMAPI_INT32, u * 4, "input_ids")) ||
      (rc = need_io(m, sh->embed, 0, 1, 0, ht, u * hb, "hidden states")))
    return rc;
  for (int i = 0; i < m->d.num_layers; i++) {
    net_t b = sh->block[i];
    if ((rc = need_io(m, b, 0, 0, 0, ht, u * hb, "hidden states")) ||
        (rc = need_io(m, b, 0, 0, 1, BMAPI_INT32, u * 4, "position_ids")) ||
        (rc = need_io(m, b, 0, 0, 2, m->d.mask_dtype, u * (s + u) * 2, "attention_mask [unshare, share+unshare]")) ||
        (rc = need_io(m, b, 0, 0, 3, ANY_DTYPE, s * kb, "history_k")) ||
        (rc = need_io(m, b, 0, 0, 4, ANY_DTYPE, s * kb, "history_v")) ||
        (rc = need_io(m, b, 0, 1, 0, ht, u * hb, "hidden states")) ||
        (rc = need_io(m, b, 0, 1, 1, ANY_DTYPE, u * kb, "new K rows")) ||
        (rc = need_io(m, b, 0, 1, 2, ANY_DTYPE, u * kb, "new V rows")))
      return rc;
  }
  return TPC_OK;
}

void free_share(tpc_model *m) {
  free(m->share.block);
  free(m->share.host);
  m->share.block = NULL;
  m->share.host = NULL;
}

/* Decode mask for the token at position p (row kv_row(m, p)). */
int share_decode_mask(tpc_model *m, bmapi_mem_t mask_mem, int p) {
  int L = m->d.kv_len, s = m->share.shared, S = m->share.share_rows, row = kv_row(m, p), rc;
  unsigned short neg = mask_min(m->d.mask_dtype);
  if ((rc = ensure_mask_buf(m, (size_t)L + 1))) return rc;
  for (int j = 0; j <= L; j++) m->buf.mask_buf[j] = (j < s || (j >= S && j < row) || j == L) ? 0 : neg;
  m->kv.mask_zeros = -1; /* the incremental decode mask of masks.c does not describe this one */
  return upload(m, mask_mem, 0, m->buf.mask_buf, (size_t)(L + 1) * 2, "decode mask");
}

/* Positions s.. and the [UNSHARE, SHARE+UNSHARE] mask of u unshared tokens. */
static int unshare_host_inputs(tpc_model *m, int s, int u) {
  shim_share *sh = &m->share;
  int S = sh->share_rows, U = sh->unshare_rows, cols = S + U, rc;
  unsigned short neg = mask_min(m->d.mask_dtype);
  if ((rc = ensure_mask_buf(m, (size_t)U * cols))) return rc;
  for (int i = 0; i < U; i++) {
    sh->host[U + i] = i < u ? s + i : 0;
    for (int j = 0; j < cols; j++)
      m->buf.mask_buf[(size_t)i * cols + j] = (i < u && (j < s || (j >= S && j - S <= i))) ? 0 : neg;
  }
  return TPC_OK;
}

/* One unshared layer: history = cache rows [0, SHARE), new K/V at rows SHARE.. */
static int unshare_layer(tpc_model *m, int i, int u, bmapi_mem_t *hidden, bmapi_mem_t *pos, bmapi_mem_t *mask) {
  shim_share *sh = &m->share;
  net_t b = sh->block[i];
  bmapi_tensor_t in[8], out[8];
  int U = sh->unshare_rows, rc;
  size_t hist = (size_t)sh->share_rows * m->buf.kv_row_bytes, mask_bytes = (size_t)U * (sh->share_rows + U) * 2;
  own_tensors(b, 0, in, out);
  if (m->buf.direct_io) {
    if (i == 0 && ((rc = upload(m, in[1].device_mem, 0, sh->host + U, (size_t)U * 4, "position ids")) ||
                   (rc = upload(m, in[2].device_mem, 0, m->buf.mask_buf, mask_bytes, "unshare mask"))))
      return rc;
    if (i == 0) *pos = in[1].device_mem, *mask = in[2].device_mem;
    in[0].device_mem = *hidden;
    in[1].device_mem = *pos;
    in[2].device_mem = *mask;
    in[3].device_mem = mem_at(m->buf.kv_k[i], 0, hist);
    in[4].device_mem = mem_at(m->buf.kv_v[i], 0, hist);
    out[1].device_mem = kv_view(m, m->buf.kv_k[i], sh->share_rows);
    out[2].device_mem = kv_view(m, m->buf.kv_v[i], sh->share_rows);
  } else if ((hidden->device_addr != in[0].device_mem.device_addr &&
              (rc = copy_d2d(m, in[0].device_mem, 0, *hidden, 0, (size_t)U * m->buf.hidden_bytes, "hidden state"))) ||
             (rc = upload(m, in[1].device_mem, 0, sh->host + U, (size_t)U * 4, "position ids")) ||
             (rc = upload(m, in[2].device_mem, 0, m->buf.mask_buf, mask_bytes, "unshare mask")) ||
             (rc = copy_d2d(m, in[3].device_mem, 0, m->buf.kv_k[i], 0, hist, "K history")) ||
             (rc = copy_d2d(m, in[4].device_mem, 0, m->buf.kv_v[i], 0, hist, "V history"))) {
    return rc;
  }
  if ((rc = launch(m, b, in, out))) return rc;
  size_t rows = (size_t)u * m->buf.kv_row_bytes, at = (size_t)sh->share_rows * m->buf.kv_row_bytes;
  if (!m->buf.direct_io &&
      ((rc = copy_d2d(m, m->buf.kv_k[i], at, out[1].device_mem, 0, rows, "K cache")) ||
       (rc = copy_d2d(m, m->buf.kv_v[i], at, out[2].device_mem, 0, rows, "V cache"))))
    return rc;
  *hidden = out[0].device_mem;
  return TPC_OK;
}

/* ids[s, s + u) as the unshared part after s shared rows. */
static int run_unshared(tpc_model *m, const int *ids, int s, int u, int need_head, int *next_token) {
  shim_share *sh = &m->share;
  net_t e = sh->embed;
  bmapi_tensor_t ein[2], eout[2];
  bmapi_mem_t hidden, pos = {0}, mask = {0};
  int U = sh->unshare_rows, rc;
  memset(sh->host, 0, sizeof(int32_t) * (size_t)U);
  memcpy(sh->host, ids + s, sizeof(int32_t) * (size_t)u);
  own_tensors(e, 0, ein, eout);
  if ((rc = upload(m, ein[0].device_mem, 0, sh->host, (size_t)U * 4, "token ids")) || (rc = launch(m, e, ein, eout)) ||
      (rc = unshare_host_inputs(m, s, u)))
    return rc;
  hidden = eout[0].device_mem;
  for (int i = 0; i < m->d.num_layers; i++)
    if ((rc = unshare_layer(m, i, u, &hidden, &pos, &mask))) return rc;
  memcpy(m->kv.tokens + s, ids + s, sizeof(int32_t) * (size_t)u);
  m->kv.position = s + u;
  m->kv.mask_zeros = -1;
  if (need_head)
    return run_head(m, mem_at(hidden, (size_t)(u - 1) * m->buf.hidden_bytes, m->buf.hidden_bytes), s + u, next_token);
  m->kv.token_on_device = 0;
  return sync_device(m);
}

/* Common prefix of ids[0, n) and t[0, limit). */
static int common(const int32_t *t, int limit, const int *ids, int n) {
  int k = 0;
  while (k < limit && k < n && t[k] == ids[k]) k++;
  return k;
}

/* How many leading tokens come from rows kept on the device: the cache's
 * shared rows or the pinned prefix (*restore: copy those back first). */
static int reusable(tpc_model *m, const int *ids, int n, int *restore) {
  shim_share *sh = &m->share;
  int held = m->kv.position < sh->shared ? m->kv.position : sh->shared;
  int cached = common(m->kv.tokens, held, ids, n), pinned = common(m->kv.prefix_tokens, m->kv.prefix_len, ids, n);
  int s = pinned > cached ? pinned : cached;
  *restore = pinned > cached;
  if (s == n) s = n - 1; /* the last token runs again for its logits */
  /* worth it only when the rest goes through the unshared nets in one launch */
  return n - s <= sh->unshare_rows ? s : 0;
}

/* The shared part ids[0, s), fresh, as the usual causal prefill over block_N. */
static int run_shared(tpc_model *m, const int *ids, int s, int need_head, int *next_token) {
  m->kv.position = 0;
  m->share.shared = 0; /* the usual prefill: rows = positions */
  int rc = prefill_impl(m, ids, s, need_head, next_token);
  m->share.shared = s;
  return rc;
}

static int share_prefill_impl(tpc_model *m, const int *ids, int n, int reuse, int *next_token) {
  shim_share *sh = &m->share;
  int restore = 0, s = reuse ? reusable(m, ids, n, &restore) : 0, rc;
  if (s > 0) {
    m->stats.timing.reused = s;
    if (restore && (rc = restore_prefix(m, s))) return rc;
    sh->shared = s;
  } else {
    s = n < sh->share_rows ? n : sh->share_rows;
    if ((rc = run_shared(m, ids, s, s == n, next_token))) return rc;
    if (s == n) return TPC_OK;
  }
  int u = n - s < sh->unshare_rows ? n - s : sh->unshare_rows;
  if ((rc = run_unshared(m, ids, s, u, s + u == n, next_token))) return rc;
  for (int i = s + u; i < n && !rc; i++) rc = decode_impl(m, ids[i], i == n - 1, next_token);
  return rc;
}

/* tpc_prefill / tpc_prefill_reuse on a share-cache bmodel. */
int share_prefill(tpc_model *m, const int *ids, int n, int reuse, int *next_token) {
  shim_share *sh = &m->share;
  if (!ids || n < 1) return fail(m, TPC_E_ARG, "prefill needs at least one token");
  int room = m->d.kv_len - sh->share_rows; /* rows for the unshared part and the answer */
  if (n - sh->share_rows > room)
    return fail(m, TPC_E_TOO_LONG, "the prompt has %d tokens but this share-cache bmodel holds at most %d: %d shared "
                "rows and %d for the rest and the answer", n, sh->share_rows + room, sh->share_rows, room);
  begin_call(m);
  int rc = share_prefill_impl(m, ids, n, reuse, next_token);
  if (rc) m->kv.position = 0;
  end_call(m);
  return rc;
}

/* tpc_pin_prefix: the pinned prefix is the shared part, its rows at [0, n)
 * (computed unless the cache's shared rows hold them already). */
int share_pin(tpc_model *m, const int *ids, int n) {
  shim_share *sh = &m->share;
  if (n > sh->share_rows)
    return fail(m, TPC_E_TOO_LONG, "the shared prefix has %d tokens but this share-cache bmodel's shared part "
                "holds %d (its share length); shorten it", n, sh->share_rows);
  int held = m->kv.position < sh->shared ? m->kv.position : sh->shared, next, rc = TPC_OK;
  begin_call(m);
  if (common(m->kv.tokens, held, ids, n) == n) {
    m->stats.timing.reused = n;
  } else {
    rc = run_shared(m, ids, n, 0, &next);
    if (rc) m->kv.position = 0;
  }
  end_call(m);
  return rc;
}
