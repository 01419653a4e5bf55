/* verify.c - one block_kv chunk with the model's greedy pick at every row:
 * the verifier of prompt-lookup decoding (the caller drafts the tokens and
 * decides what to keep; nothing here knows where the drafts come from). */
#include "shim_internal.h"

int tpc_chunk_capacity(const tpc_model *m) { return m && m->d.has_block_kv ? m->net.block_kv_len : 0; }

/* Where the heads read row r of the chunk's last hidden rows.  With io_alone
 * the block_kv net's own output buffer stays put while the heads run; with
 * basic addressing nets share IO memory, so the rows are copied aside once. */
static int chunk_rows(tpc_model *m, bmapi_mem_t hidden, int c, bmapi_mem_t *rows) {
  if (m->buf.direct_io) {
    *rows = hidden;
    return TPC_OK;
  }
  size_t bytes = (size_t)m->net.block_kv_len * m->buf.hidden_bytes;
  int rc;
  if (!m->buf.chunk_hidden.size && (rc = dev_alloc(m, &m->buf.chunk_hidden, bytes, "a chunk's hidden rows")))
    return rc;
  if ((rc = copy_d2d(m, m->buf.chunk_hidden, 0, hidden, 0, (size_t)c * m->buf.hidden_bytes, "a chunk's hidden rows")))
    return rc;
  *rows = m->buf.chunk_hidden;
  return TPC_OK;
}

static int chunk_picks_impl(tpc_model *m, const int *ids, int c, int *picks) {
  int p = m->kv.position, rc;
  bmapi_mem_t hidden, rows;
  if ((rc = block_kv_layers(m, ids, p, c, &hidden)) || (rc = chunk_rows(m, hidden, c, &rows))) return rc;
  /* The heads take one row each: a top-1 lm_head (or lm_head + greedy_head)
   * is one launch (two) per row, a logits head one launch and one download
   * per row with the argmax on the host.  run_head leaves the last row's
   * pick where the next decode step reads its token. */
  for (int r = 0; r < c; r++) {
    bmapi_mem_t row = mem_at(rows, (size_t)r * m->buf.hidden_bytes, m->buf.hidden_bytes);
    if ((rc = run_head(m, row, p + r + 1, &picks[r]))) return rc;
  }
  return TPC_OK;
}

int tpc_chunk_picks(tpc_model *m, const int *ids, int c, int *picks) {
  if (!m) return TPC_E_ARG;
  tpc_desc *d = &m->d;
  int p = m->kv.position;
  if (!d->has_block_kv)
    return fail(m, TPC_E_MODEL,
                "this bmodel has no block_kv nets (llm_convert --use_history_kv builds have them): it cannot "
                "check several tokens in one pass");
  if (!ids || !picks || c < 1 || c > m->net.block_kv_len)
    return fail(m, TPC_E_ARG, "a chunk takes 1 to %d tokens, not %d", m->net.block_kv_len, c);
  if (sampling_active(m)) return fail(m, TPC_E_ARG, "chunk picks are greedy, but sampling is set");
  if (p <= 0) return fail(m, TPC_E_ARG, "a chunk needs a prefilled sequence to follow");
  if (p + c > d->kv_len)
    return fail(m, TPC_E_FULL, "the context is full: %d tokens at position %d pass the KV length %d", c, p, d->kv_len);
  begin_call(m);
  int rc = chunk_picks_impl(m, ids, c, picks);
  if (rc) {
    /* Rows from p on may be half written: forget them (rows before p are untouched). */
    m->kv.position = p;
    m->kv.token_on_device = 0;
  } else {
    m->kv.position = p + c;
  }
  end_call(m);
  return rc;
}
