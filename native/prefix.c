/* prefix.c - a pinned shared prefix: KV rows kept aside on the device. */
#include "shim_internal.h"

/* Caches per layer: K and V, or one K|V cache (sliding layout).  The pinned
 * copy holds layer i's part q at rows [(parts * i + q) * prefix_len, ...). */
static int kv_parts(const tpc_model *m) { return m->d.kv_layout == TPC_KV_SLIDING ? 1 : 2; }

/* Copy the pinned rows [0, rows) back into the cache: one device copy per
 * layer and part instead of recomputing them (sliding: as the window's
 * last rows). */
int restore_prefix(tpc_model *m, int rows) {
  size_t n = (size_t)m->kv.prefix_len * m->buf.kv_row_bytes, size = (size_t)rows * m->buf.kv_row_bytes;
  int rc = TPC_OK, parts = kv_parts(m);
  m->kv.slide_rows = rows;
  size_t at = kv_row_offset(m, 0);
  for (int i = 0; i < m->d.num_layers && !rc; i++) {
    rc = copy_d2d(m, m->buf.kv_k[i], at, m->buf.prefix_mem, (size_t)(parts * i) * n, size, "pinned K rows");
    if (!rc && parts == 2)
      rc = copy_d2d(m, m->buf.kv_v[i], at, m->buf.prefix_mem, (size_t)(2 * i + 1) * n, size, "pinned V rows");
  }
  if (rc) return rc;
  memcpy(m->kv.tokens, m->kv.prefix_tokens, sizeof(int32_t) * (size_t)rows);
  m->kv.position = rows;
  m->kv.token_on_device = 0;
  return TPC_OK;
}

static void drop_prefix(tpc_model *m) {
  if (m->buf.prefix_mem.size) RT.free_device(H(m), m->buf.prefix_mem);
  memset(&m->buf.prefix_mem, 0, sizeof m->buf.prefix_mem);
  free(m->kv.prefix_tokens);
  m->kv.prefix_tokens = NULL;
  m->kv.prefix_len = 0;
}

int tpc_pin_prefix(tpc_model *m, const int *ids, int n) {
  if (!m || n < 0 || (n > 0 && !ids)) return TPC_E_ARG;
  drop_prefix(m);
  if (n == 0) return TPC_OK;
  if (m->md.on) return fail(m, TPC_E_ARG, "a shared prefix is not supported on multi-device bmodels yet");
  if (n >= m->d.kv_len)
    return fail(m, TPC_E_ARG, "a shared prefix of %d tokens leaves no room in this bmodel's KV length %d", n,
                m->d.kv_len);
  int32_t *toks = malloc(sizeof(int32_t) * (size_t)n);
  if (!toks) return fail(m, TPC_E_NOMEM, "out of host memory");
  int want = m->vis.want_img_pos, next;
  m->vis.want_img_pos = -1; /* the pinned rows are text: they serve any prompt up to its image token */
  /* computes only what is not cached yet */
  int rc = m->share.on ? share_pin(m, ids, n) : tpc_prefill_reuse(m, ids, n, &next);
  m->vis.want_img_pos = want;
  if (rc) {
    free(toks);
    return rc;
  }
  tpc_timing t = m->stats.timing;
  int parts = kv_parts(m);
  size_t per = (size_t)n * m->buf.kv_row_bytes, bytes = per * parts * (size_t)m->d.num_layers, at = kv_row_offset(m, 0);
  bmapi_mem_t mem;
  if (bytes > 0xffffffffu || RT.malloc_device_byte(H(m), &mem, (unsigned int)bytes) != 0) {
    free(toks);
    return fail(m, TPC_E_NOMEM, "not enough device memory to keep a %d-token shared prefix (%zu MB)", n,
                bytes >> 20);
  }
  m->buf.prefix_mem = mem;
  begin_call(m);
  for (int i = 0; i < m->d.num_layers && !rc; i++) {
    rc = copy_d2d(m, mem, (size_t)(parts * i) * per, m->buf.kv_k[i], at, per, "K rows to pin");
    if (!rc && parts == 2) rc = copy_d2d(m, mem, (size_t)(2 * i + 1) * per, m->buf.kv_v[i], at, per, "V rows to pin");
  }
  if (!rc) rc = sync_device(m);
  end_call(m);
  if (rc) {
    free(toks);
    drop_prefix(m);
    return rc;
  }
  memcpy(toks, ids, sizeof(int32_t) * (size_t)n);
  m->kv.prefix_tokens = toks;
  m->kv.prefix_len = n;
  /* Report the prefill's timing (how long computing the prefix took) plus the copies. */
  t.total_us += m->stats.timing.total_us;
  t.device_us += m->stats.timing.device_us;
  t.host_us += m->stats.timing.host_us;
  t.copies += m->stats.timing.copies;
  m->stats.timing = t;
  return TPC_OK;
}

int tpc_pinned_prefix(const tpc_model *m) { return m ? m->kv.prefix_len : 0; }
