/* vision.c - the vit net, image states and cross-attention layers. */
#include "shim_internal.h"

/* ------------------------------------------------------------------ */
/* 8. vision                                                            */
/* ------------------------------------------------------------------ */
/*
 * Llama-3.2-Vision as llm_convert compiles it:
 *   vit            pixel_values f32 [T,3,H,W], aspect_ratio_ids [1,1],
 *                  aspect_ratio_mask [1,1,T] -> image states [T,P,hidden]
 *   block_N        (cross) hidden [1,S,h], image states, text_row_mask [1,S,1],
 *                  mask [1,1,S,T*P] -> hidden, image K, image V [1,heads,T*P,d]
 *   block_cache_N  (cross) hidden [1,1,h], mask [1,1,1,T*P], image K, image V
 *                  -> hidden
 * Masks follow transformers: a row from the image token on sees the patches
 * of the used tiles (0) and not the padding tiles (-10000); an earlier row
 * sees no tile, which transformers turns into an all-0 row, and its MLP
 * output is dropped by text_row_mask 0.  The image K/V of a cross layer is
 * the history of its decode net (its own IO with io_alone, else ours).
 * Prefill cross nets share IO memory with the other prefill nets (basic
 * addressing), so their hidden rows pass through our own buffers and the
 * self-attention inputs we reuse are uploaded again after them.
 */

static int is_cross_layer(tpc_model *m, int i) {
  net_t b = m->net.block[i];
  int nin = per_device(b, b->input_num, m->d.num_device);
  /* Self-attention blocks take int32 position ids second; cross blocks the
   * float image states. */
  return nin >= 4 && is_float_dtype(b->input_dtypes[1]) && b->stages[0].input_shapes[1].num_dims == 3;
}

int describe_vision(tpc_model *m) {
  tpc_desc *d = &m->d;
  tpc_vision_desc *v = &m->vis.vd;
  int L = d->num_layers, ncross = 0;
  memset(v, 0, sizeof *v);
  m->vis.is_cross = calloc((size_t)L, sizeof(int));
  if (!m->vis.is_cross) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < L; i++) {
    if (!is_cross_layer(m, i)) continue;
    net_t c = m->net.block_cache[i];
    int cin = per_device(c, c->input_num, d->num_device);
    if (i == 0)
      return fail(m, TPC_E_MODEL, "layer 0 is a cross-attention layer; tpuchat needs a self-attention layer first");
    if (cin != 4 || c->output_num < 1 || m->net.block[i]->output_num < 3)
      return fail(m, TPC_E_MODEL,
                  "block_%d takes image states but block_cache_%d has %d inputs (want hidden, mask, "
                  "image K, image V)", i, i, cin);
    m->vis.is_cross[i] = 1;
    if (ncross < 64) v->cross_layers[ncross] = i;
    ncross++;
  }
  v->num_cross_layers = ncross;
  if (!ncross) {
    free(m->vis.is_cross);
    m->vis.is_cross = NULL;
    return TPC_OK;
  }
  /* Cross layers cannot be fed by block_kv chunks: append by decode steps. */
  d->has_block_kv = 0;
  int xl = v->cross_layers[0];
  const bmapi_shape_t *xk = &m->net.block_cache[xl]->stages[0].input_shapes[2];
  const bmapi_shape_t *st = &m->net.block[xl]->stages[0].input_shapes[1];
  m->vis.xkv_bytes = shape_count(xk, 0) * (size_t)dtype_size(m->net.block_cache[xl]->input_dtypes[2]);
  v->image_kv_bytes = (long long)ncross * 2 * (long long)m->vis.xkv_bytes;
  d->kv_cache_bytes = (long long)(L - ncross) * 2 * (long long)d->kv_len * (long long)m->buf.kv_row_bytes +
                      v->image_kv_bytes;
  m->vis.vit = find_net(m, "vit");
  if (!m->vis.vit) return TPC_OK; /* cross layers without a vision tower: text only */
  net_t vit = m->vis.vit;
  const bmapi_shape_t *px = &vit->stages[0].input_shapes[0], *vo = &vit->stages[0].output_shapes[0];
  if (vit->input_num < 3 || px->num_dims != 4 || vo->num_dims != 3)
    return fail(m, TPC_E_MODEL, "the vit net does not take pixel_values [tiles,3,H,W], aspect_ratio_ids "
                "and aspect_ratio_mask, or does not return [tiles, patches, hidden]");
  v->tiles = px->dims[0];
  v->channels = px->dims[1];
  v->image_size = px->dims[2];
  v->pixel_dtype = vit->input_dtypes[0];
  v->patches = vo->dims[1];
  if (vo->dims[0] != v->tiles || vo->dims[2] != d->hidden_size || st->dims[0] != v->tiles ||
      st->dims[1] != v->patches || st->dims[2] != d->hidden_size)
    return fail(m, TPC_E_MODEL, "vit output [%d,%d,%d] does not match block_%d's image states [%d,%d,%d]",
                vo->dims[0], vo->dims[1], vo->dims[2], xl, st->dims[0], st->dims[1], st->dims[2]);
  if (vit->output_dtypes[0] != m->net.block[xl]->input_dtypes[1])
    return fail(m, TPC_E_MODEL, "vit output dtype %d differs from block_%d's image states dtype %d",
                vit->output_dtypes[0], xl, m->net.block[xl]->input_dtypes[1]);
  if (v->pixel_dtype != BMAPI_F32 && v->pixel_dtype != BMAPI_BF16 && v->pixel_dtype != BMAPI_F16)
    return fail(m, TPC_E_MODEL, "vit pixel_values dtype %d is not a float type", v->pixel_dtype);
  if (xk->dims[xk->num_dims - 2] != v->tiles * v->patches)
    return fail(m, TPC_E_MODEL, "block_cache_%d's image K has %d rows, expected tiles x patches = %d", xl,
                xk->dims[xk->num_dims - 2], v->tiles * v->patches);
  m->vis.img_states_bytes = shape_count(vo, 0) * (size_t)dtype_size(vit->output_dtypes[0]);
  m->vis.xrows = m->net.block[xl]->stages[0].input_shapes[0].dims[1];
  v->has_vision = 1;
  return TPC_OK;
}

int alloc_cross_kv(tpc_model *m, int layer) {
  if (m->buf.direct_io) {
    m->buf.kv_k[layer] = m->net.block_cache[layer]->stages[0].input_mems[2];
    m->buf.kv_v[layer] = m->net.block_cache[layer]->stages[0].input_mems[3];
    return TPC_OK;
  }
  m->buf.own_kv = 1;
  if (RT.malloc_device_byte(H(m), &m->buf.kv_k[layer], (unsigned int)m->vis.xkv_bytes) != 0 ||
      RT.malloc_device_byte(H(m), &m->buf.kv_v[layer], (unsigned int)m->vis.xkv_bytes) != 0)
    return fail(m, TPC_E_NOMEM, "not enough device memory for the image K/V of layer %d", layer);
  return TPC_OK;
}

int alloc_vision(tpc_model *m) {
  if (!m->vis.vd.has_vision) return TPC_OK;
  tpc_vision_desc *v = &m->vis.vd;
  size_t cols = (size_t)v->tiles * v->patches, rows = (size_t)m->vis.xrows;
  int rc;
  if ((rc = dev_alloc(m, &m->vis.img_states, m->vis.img_states_bytes, "the image states")) ||
      (rc = dev_alloc(m, &m->vis.xhidden_in, rows * m->buf.hidden_bytes, "hidden rows")) ||
      (rc = dev_alloc(m, &m->vis.xhidden_out, rows * m->buf.hidden_bytes, "hidden rows")) ||
      (rc = dev_alloc(m, &m->vis.xmask_prefill, rows * cols * 2, "the cross-attention mask")) ||
      (rc = dev_alloc(m, &m->vis.row_mask, rows * 2, "the text row mask")) ||
      (rc = dev_alloc(m, &m->vis.xmask_decode, cols * 2, "the cross-attention mask")))
    return rc;
  m->vis.xbuf = calloc(rows * cols + rows, sizeof(unsigned short));
  m->vis.img_tiles = calloc((size_t)v->tiles, sizeof(int));
  if (v->pixel_dtype != BMAPI_F32)
    m->vis.pix_buf = calloc((size_t)v->tiles * v->channels * v->image_size * v->image_size, 2);
  if (!m->vis.xbuf || !m->vis.img_tiles || (v->pixel_dtype != BMAPI_F32 && !m->vis.pix_buf))
    return fail(m, TPC_E_NOMEM, "out of host memory");
  return TPC_OK;
}

void free_vision(tpc_model *m) {
  bmapi_mem_t *mems[] = {&m->vis.img_states, &m->vis.xhidden_in, &m->vis.xhidden_out, &m->vis.xmask_prefill, &m->vis.row_mask,
                         &m->vis.xmask_decode};
  for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++)
    if (mems[i]->size && m->handles[0]) RT.free_device(H(m), *mems[i]);
  free(m->vis.is_cross);
  free(m->vis.xbuf);
  free(m->vis.img_tiles);
  free(m->vis.pix_buf);
}

/* Validate the image settings of a prefill of n ids and limit the reusable
 * prefix *lcp to rows computed with the same image and image position. */
/* Limit the reusable rows [0, *lcp) to those computed with the image state
 * this prompt needs.  pinned: they come from the pinned (text-only) copy. */
int image_checks(tpc_model *m, int n, int *lcp, int pinned) {
  int want = m->vis.want_img_pos;
  if (want >= 0) {
    if (!m->vis.img_loaded) return fail(m, TPC_E_ARG, "an image position was given but no image is set");
    if (want >= n)
      return fail(m, TPC_E_ARG, "the image token position %d is outside the %d-token prompt", want, n);
    if (m->d.is_dynamic) return fail(m, TPC_E_MODEL, "images on dynamic (--dynamic) bmodels are not supported");
  }
  int same;
  if (pinned) same = 1; /* text-only rows, all before the image token (checked by the caller) */
  else if (want < 0) same = m->vis.seq_img_pos < 0;
  else same = m->vis.seq_img_pos >= 0 && m->vis.seq_img_gen == m->vis.img_gen;
  if (!same) {
    *lcp = 0;
  } else if (want >= 0) {
    /* A moved image token: rows before both positions saw no tile either way. */
    int lo = want < m->vis.seq_img_pos ? want : m->vis.seq_img_pos;
    if (!pinned && want != m->vis.seq_img_pos && *lcp > lo) *lcp = lo;
    /* Decode nets have no text_row_mask: rows before the image token can
     * only come from a prefill. */
    if (*lcp < want) *lcp = 0;
  }
  return TPC_OK;
}

int upload_cross_masks(tpc_model *m, int n, int rows) {
  tpc_vision_desc *v = &m->vis.vd;
  int xl = v->cross_layers[0], cols = v->tiles * v->patches, pos = m->vis.seq_img_pos, rc;
  net_t b = m->net.block[xl];
  if (rows != m->vis.xrows)
    return fail(m, TPC_E_MODEL, "cross-attention block_%d takes %d rows but the prefill has %d", xl, m->vis.xrows, rows);
  int mdt = b->input_dtypes[3], rdt = b->input_dtypes[2];
  unsigned short neg = mask_min(mdt), one = half_one(rdt);
  unsigned short *xm = m->vis.xbuf, *rm = m->vis.xbuf + (size_t)rows * cols;
  for (int i = 0; i < rows; i++) {
    int sees = i >= pos && i < n;
    rm[i] = sees ? one : 0;
    unsigned short *row = xm + (size_t)i * cols;
    for (int t = 0; t < v->tiles; t++) {
      unsigned short val = sees && !m->vis.img_tiles[t] ? neg : 0;
      for (int p = 0; p < v->patches; p++) row[t * v->patches + p] = val;
    }
  }
  if ((rc = upload(m, m->vis.xmask_prefill, 0, xm, (size_t)rows * cols * 2, "cross-attention mask")) ||
      (rc = upload(m, m->vis.row_mask, 0, rm, (size_t)rows * 2, "text row mask")))
    return rc;
  return TPC_OK;
}

int cross_prefill_layer(tpc_model *m, int layer, int rows, bmapi_mem_t *hidden) {
  net_t b = m->net.block[layer];
  bmapi_tensor_t in[8], out[8];
  int rc;
  own_tensors(b, 0, in, out);
  if (in[0].shape.dims[1] != rows)
    return fail(m, TPC_E_MODEL, "cross-attention block_%d takes %d rows, the prefill has %d", layer,
                in[0].shape.dims[1], rows);
  size_t hb = (size_t)rows * m->buf.hidden_bytes;
  if ((rc = copy_d2d(m, m->vis.xhidden_in, 0, *hidden, 0, hb, "hidden rows"))) return rc;
  in[0].device_mem = m->vis.xhidden_in;
  in[1].device_mem = m->vis.img_states;
  in[2].device_mem = m->vis.row_mask;
  in[3].device_mem = m->vis.xmask_prefill;
  out[0].device_mem = m->vis.xhidden_out;
  out[1].device_mem = m->buf.kv_k[layer];
  out[2].device_mem = m->buf.kv_v[layer];
  if ((rc = launch(m, b, in, out))) return rc;
  *hidden = m->vis.xhidden_out;
  return TPC_OK;
}

int cross_decode_layer(tpc_model *m, int layer, bmapi_mem_t *hidden) {
  net_t c = m->net.block_cache[layer];
  bmapi_tensor_t in[8], out[8];
  int rc;
  own_tensors(c, 0, in, out);
  if (m->buf.direct_io) {
    in[0].device_mem = *hidden;
  } else if ((rc = copy_d2d(m, in[0].device_mem, 0, *hidden, 0, m->buf.hidden_bytes, "hidden state"))) {
    return rc;
  }
  in[1].device_mem = m->vis.xmask_decode;
  in[2].device_mem = m->buf.kv_k[layer];
  in[3].device_mem = m->buf.kv_v[layer];
  if ((rc = launch(m, c, in, out))) return rc;
  *hidden = out[0].device_mem;
  return TPC_OK;
}

int tpc_describe_vision(const tpc_model *m, tpc_vision_desc *out) {
  if (!m || !out) return TPC_E_ARG;
  *out = m->vis.vd;
  return TPC_OK;
}

int tpc_set_image(tpc_model *m, const float *pixels, int tiles, int size, int aspect_ratio_id,
                  const int *aspect_ratio_mask) {
  if (!m) return TPC_E_ARG;
  tpc_vision_desc *v = &m->vis.vd;
  if (!v->has_vision)
    return fail(m, TPC_E_ARG, "this bmodel has no vision encoder (no vit net with cross-attention layers): "
                "it cannot take images");
  if (!pixels || !aspect_ratio_mask) return fail(m, TPC_E_ARG, "no pixel values given");
  if (tiles != v->tiles || size != v->image_size)
    return fail(m, TPC_E_ARG, "the image was preprocessed to %d tiles of %d px but this bmodel takes %d tiles of %d px",
                tiles, size, v->tiles, v->image_size);
  int used = 0;
  for (int t = 0; t < tiles; t++) used += aspect_ratio_mask[t] != 0;
  if (!used || aspect_ratio_id < 0) return fail(m, TPC_E_ARG, "the image has no tile");
  begin_call(m);
  net_t vit = m->vis.vit;
  bmapi_tensor_t in[4], out[2];
  own_tensors(vit, 0, in, out);
  size_t count = (size_t)tiles * v->channels * size * size;
  int rc;
  if (v->pixel_dtype == BMAPI_F32) {
    rc = upload(m, in[0].device_mem, 0, pixels, count * 4, "pixel values");
  } else {
    unsigned short *h = m->vis.pix_buf;
    for (size_t i = 0; i < count; i++) h[i] = float_to_half(pixels[i], v->pixel_dtype);
    rc = upload(m, in[0].device_mem, 0, h, count * 2, "pixel values");
  }
  int32_t arid = aspect_ratio_id, armask[64];
  for (int t = 0; t < tiles && t < 64; t++) armask[t] = aspect_ratio_mask[t] != 0;
  if (!rc) rc = upload(m, in[1].device_mem, 0, &arid, 4, "aspect ratio id");
  if (!rc) rc = upload(m, in[2].device_mem, 0, armask, sizeof(int32_t) * (size_t)(tiles < 64 ? tiles : 64),
                       "aspect ratio mask");
  if (!rc) rc = launch(m, vit, in, out);
  if (!rc) rc = sync_device(m);
  /* Later launches reuse the vit's output memory: copy the states away now. */
  if (!rc) rc = copy_d2d(m, m->vis.img_states, 0, out[0].device_mem, 0, m->vis.img_states_bytes, "image states");
  if (!rc) {
    int cols = tiles * v->patches;
    unsigned short neg = mask_min(m->net.block_cache[v->cross_layers[0]]->input_dtypes[1]);
    for (int t = 0; t < tiles; t++) {
      m->vis.img_tiles[t] = aspect_ratio_mask[t] != 0;
      for (int p = 0; p < v->patches; p++) m->vis.xbuf[t * v->patches + p] = m->vis.img_tiles[t] ? 0 : neg;
    }
    rc = upload(m, m->vis.xmask_decode, 0, m->vis.xbuf, (size_t)cols * 2, "cross-attention mask");
  }
  if (!rc) rc = sync_device(m);
  /* The cached rows (and embedding_cache's input, in shared IO) belong to
   * the previous image or to none. */
  m->kv.position = 0;
  m->kv.token_on_device = 0;
  m->vis.img_gen++;
  m->vis.img_loaded = rc == TPC_OK;
  end_call(m);
  return rc;
}

int tpc_set_image_pos(tpc_model *m, int image_pos) {
  if (!m) return TPC_E_ARG;
  if (image_pos < -1) return fail(m, TPC_E_ARG, "bad image position %d", image_pos);
  if (image_pos >= 0 && !m->vis.vd.has_vision)
    return fail(m, TPC_E_ARG, "this bmodel has no vision encoder (no vit net with cross-attention layers): "
                "it cannot take images");
  m->vis.want_img_pos = image_pos;
  return TPC_OK;
}

int tpc_image_states(tpc_model *m, float *out, int n) {
  if (!m || !out) return TPC_E_ARG;
  if (!m->vis.img_loaded) return fail(m, TPC_E_ARG, "no image is set");
  int dt = m->vis.vit->output_dtypes[0], es = dtype_size(dt);
  size_t count = m->vis.img_states_bytes / (size_t)es;
  if ((size_t)n < count) return fail(m, TPC_E_ARG, "buffer too small for %zu image states", count);
  void *raw = malloc(m->vis.img_states_bytes);
  if (!raw) return fail(m, TPC_E_NOMEM, "out of host memory");
  int rc = download(m, raw, m->vis.img_states, 0, m->vis.img_states_bytes, "image states");
  if (!rc)
    for (size_t i = 0; i < count; i++)
      out[i] = es == 4 ? ((float *)raw)[i] : half_to_float(((unsigned short *)raw)[i], dt);
  free(raw);
  return rc;
}
