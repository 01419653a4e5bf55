/* heads.c - lm_head and the token choice: device greedy/sample heads or the host. */
#include "shim_internal.h"

static uint64_t rng_next(tpc_model *m) { /* splitmix64 */
  uint64_t z = (m->smp.rng += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static double rng_uniform(tpc_model *m) { return (double)(rng_next(m) >> 11) * (1.0 / 9007199254740992.0); }

int sampling_active(const tpc_model *m) {
  return m->smp.sampling.sample && m->smp.sampling.temperature > 1e-5f;
}

/* The recent tokens the repetition penalty looks at: [from, end). */
static int penalty_from(const tpc_model *m, int end, int cap) {
  int w = m->smp.sampling.penalty_window > 0 ? m->smp.sampling.penalty_window : end;
  if (cap > 0 && w > cap) w = cap;
  return end - w < 0 ? 0 : end - w;
}

/* Draw one of n candidates with weights p (need not sum to 1). */
static int draw(tpc_model *m, const float *p, const int *ids, int n) {
  double total = 0;
  for (int i = 0; i < n; i++) total += p[i] > 0 ? p[i] : 0;
  if (total <= 0) return ids[0];
  double u = rng_uniform(m) * total, acc = 0;
  for (int i = 0; i < n; i++) {
    acc += p[i] > 0 ? p[i] : 0;
    if (u < acc) return ids[i];
  }
  return ids[n - 1];
}

static const float *sort_keys;

static int by_logit_desc(const void *a, const void *b) {
  float x = sort_keys[*(const int *)a], y = sort_keys[*(const int *)b];
  return x < y ? 1 : x > y ? -1 : (*(const int *)a - *(const int *)b);
}

/* Host sampling over logits, with Hugging Face's semantics: repetition
 * penalty (divide positive, multiply negative logits of seen tokens),
 * temperature, top-k, then top-p keeping at least one token.  Tokens more
 * than 20 nats below the best are never candidates (their total mass is
 * negligible), which keeps the sort short on 150k-token vocabularies. */
int host_sample(tpc_model *m, float *logits, int end) {
  int v = m->d.vocab_size;
  const tpc_sampling *sp = &m->smp.sampling;
  if (sp->repetition_penalty != 1.0f) {
    for (int i = penalty_from(m, end, 0); i < end; i++) {
      int t = m->kv.tokens[i];
      if (t < 0 || t >= v || m->smp.order[t] == -2) continue;
      logits[t] = logits[t] < 0 ? logits[t] * sp->repetition_penalty : logits[t] / sp->repetition_penalty;
      m->smp.order[t] = -2; /* mark: once per distinct token */
    }
    for (int i = penalty_from(m, end, 0); i < end; i++)
      if (m->kv.tokens[i] >= 0 && m->kv.tokens[i] < v) m->smp.order[m->kv.tokens[i]] = 0;
  }
  float best = logits[0];
  for (int i = 1; i < v; i++) if (logits[i] > best) best = logits[i];
  float floor_ = best - 20.0f * sp->temperature;
  int n = 0;
  for (int i = 0; i < v; i++) if (logits[i] >= floor_) m->smp.order[n++] = i;
  sort_keys = logits;
  qsort(m->smp.order, (size_t)n, sizeof(int), by_logit_desc);
  if (sp->top_k > 0 && sp->top_k < n) n = sp->top_k;
  double sum = 0;
  for (int i = 0; i < n; i++) {
    m->smp.probs[i] = expf((logits[m->smp.order[i]] - best) / sp->temperature);
    sum += m->smp.probs[i];
  }
  if (sp->top_p < 1.0f) {
    double acc = 0;
    int keep = n;
    for (int i = 0; i < n; i++) {
      acc += m->smp.probs[i] / sum;
      if (acc >= sp->top_p) { keep = i + 1; break; }
    }
    n = keep;
  }
  int tok = draw(m, m->smp.probs, m->smp.order, n);
  for (int i = 0; i < v; i++) m->smp.order[i] = 0;
  return tok;
}

/* Upload a 4-byte scalar to sample head input `role`, when the head has it. */
static int upload_scalar(tpc_model *m, const bmapi_tensor_t *in, int role, const void *v, const char *what) {
  int k = m->net.sample_in[role];
  return k < 0 ? TPC_OK : upload(m, in[k].device_mem, 0, v, 4, what);
}

/* Device sampling through sample_head (6 inputs) or penalty_sample_head
 * (5, top_k fixed at 50 inside), inputs mapped by name (roles.c): the
 * penalty window and the scalars go up, 50 (prob, id) pairs come down, the
 * host draws one.  A static ids input is padded with the window's last
 * token (penalising a token twice is the same as once). */
static int device_sample(tpc_model *m, bmapi_mem_t logits_mem, int end, int *tok) {
  net_t sh = m->net.sample_head;
  const int *role = m->net.sample_in;
  bmapi_tensor_t in[8], out[4];
  own_tensors(sh, 0, in, out);
  bmapi_tensor_t *ids = &in[role[TPC_SAMPLE_IDS]];
  int cap = ids->shape.dims[1];
  int from = penalty_from(m, end, cap), w = end - from, rc;
  int rows = sh->is_dynamic ? w : cap;
  if (rows > m->buf.ids_cap) return fail(m, TPC_E_MODEL, "%s takes more ids than expected", sh->name);
  for (int i = 0; i < rows; i++) m->buf.ids_buf[i] = m->kv.tokens[i < w ? from + i : end - 1];
  in[role[TPC_SAMPLE_LOGITS]].device_mem = logits_mem;
  if (sh->is_dynamic) set_len(&ids->shape, w);
  if ((rc = upload(m, ids->device_mem, 0, m->buf.ids_buf, sizeof(int32_t) * (size_t)rows, "penalty window")))
    return rc;
  float pen = m->smp.sampling.repetition_penalty, temp = m->smp.sampling.temperature, top_p = m->smp.sampling.top_p;
  int32_t top_k = m->smp.sampling.top_k > 0 && m->smp.sampling.top_k < 50 ? m->smp.sampling.top_k : 50;
  if ((rc = upload_scalar(m, in, TPC_SAMPLE_PENALTY, &pen, "penalty")) ||
      (rc = upload_scalar(m, in, TPC_SAMPLE_TEMPERATURE, &temp, "temperature")) ||
      (rc = upload_scalar(m, in, TPC_SAMPLE_TOP_K, &top_k, "top_k")) ||
      (rc = upload_scalar(m, in, TPC_SAMPLE_TOP_P, &top_p, "top_p")))
    return rc;
  /* top_k is a shape input: the outputs hold top_k candidates. */
  if ((rc = launch(m, sh, in, out))) return rc;
  if ((rc = sync_device(m))) return rc;
  int k = out[0].shape.num_dims == 2 && out[0].shape.dims[1] > 0 ? out[0].shape.dims[1] : top_k;
  if (role[TPC_SAMPLE_TOP_K] < 0 && k > top_k) k = top_k; /* fixed 50 inside: cut on the host */
  if (k > 50) k = 50;
  float p[50];
  int ids_out[50];
  if ((rc = download(m, p, out[0].device_mem, 0, sizeof(float) * (size_t)k, "sample probabilities")) ||
      (rc = download(m, ids_out, out[1].device_mem, 0, sizeof(int) * (size_t)k, "sample ids")))
    return rc;
  *tok = draw(m, p, ids_out, k);
  return TPC_OK;
}

int tpc_set_sampling(tpc_model *m, const tpc_sampling *sp) {
  if (!m || !sp) return TPC_E_ARG;
  if (sp->sample) {
    if (m->d.lm_head_kind != 2)
      return fail(m, TPC_E_ARG,
                  "this bmodel picks the top-1 token on the device (compiled without --do_sample): "
                  "sampling is not available, only greedy");
    if (!(sp->temperature >= 0) || !(sp->top_p > 0 && sp->top_p <= 1) || sp->top_k < 0 ||
        !(sp->repetition_penalty > 0) || sp->penalty_window < 0)
      return fail(m, TPC_E_ARG,
                  "bad sampling settings: need temperature >= 0, 0 < top_p <= 1, top_k >= 0, "
                  "repetition_penalty > 0");
  }
  m->smp.sampling = *sp;
  m->smp.rng = sp->seed;
  return TPC_OK;
}

/* Where the decode embedding reads its token (row 0 of its input). */
static bmapi_mem_t decode_token_mem(tpc_model *m) {
  return mem_at(m->net.decode_embed->stages[m->net.decode_stage].input_mems[0], 0, 4);
}

/* The greedy path of the next token: TPC_HEAD_DEVICE or TPC_HEAD_HOST when
 * there is a choice (logits lm_head + greedy_head), else 0. */
static int greedy_path(const tpc_model *m) {
  if (m->d.lm_head_kind != 2 || !m->net.greedy_head) return 0;
  const shim_sampler *s = &m->smp;
  if (s->head_path != TPC_HEAD_AUTO) return s->head_path;
  if (s->head_us[TPC_HEAD_HOST] <= 0) return TPC_HEAD_HOST; /* cheap to measure anywhere: first */
  if (s->head_us[TPC_HEAD_DEVICE] <= 0) return TPC_HEAD_DEVICE;
  return s->head_us[TPC_HEAD_DEVICE] <= s->head_us[TPC_HEAD_HOST] ? TPC_HEAD_DEVICE : TPC_HEAD_HOST;
}

int tpc_set_head_path(tpc_model *m, int path, double device_us, double host_us) {
  if (!m) return TPC_E_ARG;
  if (path != TPC_HEAD_AUTO && path != TPC_HEAD_DEVICE && path != TPC_HEAD_HOST)
    return fail(m, TPC_E_ARG, "unknown head path %d", path);
  if (path == TPC_HEAD_DEVICE && !m->net.greedy_head && m->d.lm_head_kind == 2)
    return fail(m, TPC_E_ARG, "this bmodel has no greedy_head");
  m->smp.head_path = path;
  if (device_us > 0) m->smp.head_us[TPC_HEAD_DEVICE] = device_us;
  if (host_us > 0) m->smp.head_us[TPC_HEAD_HOST] = host_us;
  return TPC_OK;
}

int tpc_head_costs(const tpc_model *m, double *device_us, double *host_us, int *next_path) {
  if (!m || !device_us || !host_us || !next_path) return TPC_E_ARG;
  *device_us = m->smp.head_us[TPC_HEAD_DEVICE];
  *host_us = m->smp.head_us[TPC_HEAD_HOST];
  *next_path = greedy_path(m);
  return TPC_OK;
}

/* Run lm_head and choose the next token (greedy on the device when the
 * bmodel can, else sampled or argmax'd); `end` is the number of tokens in
 * the cache including the one just fed (the penalty window's end). */
int run_head(tpc_model *m, bmapi_mem_t hidden_row, int end, int *tok) {
  net_t lm = m->net.lm_head;
  bmapi_tensor_t in[4], out[4];
  own_tensors(lm, 0, in, out);
  if (m->buf.direct_io) {
    in[0].device_mem = hidden_row;
  } else {
    int rc = copy_d2d(m, in[0].device_mem, 0, hidden_row, 0, m->buf.hidden_bytes, "hidden state to lm_head");
    if (rc) return rc;
  }
  int sample = sampling_active(m);
  /* Let a device-side token land where embedding_cache reads it, so the
   * next decode needs no upload. */
  int token_to_embedding = m->buf.direct_io && m->d.lm_head_kind == 1;
  if (token_to_embedding) out[0].device_mem = decode_token_mem(m);
  int rc = launch(m, lm, in, out);
  if (rc) return rc;

  int path = sample ? 0 : greedy_path(m);
  double t0 = now_us();
  if (sample && m->net.sample_head && !m->smp.sampling.on_host) {
    token_to_embedding = 0;
    if ((rc = device_sample(m, out[0].device_mem, end, tok))) return rc;
  } else if (m->d.lm_head_kind == 1 || path == TPC_HEAD_DEVICE) {
    bmapi_mem_t token_mem = out[0].device_mem;
    if (m->d.lm_head_kind == 2) {
      net_t g = m->net.greedy_head;
      bmapi_tensor_t gin[4], gout[4];
      own_tensors(g, 0, gin, gout);
      gin[0].device_mem = out[0].device_mem;
      if (m->buf.direct_io) gout[0].device_mem = decode_token_mem(m);
      if ((rc = launch(m, g, gin, gout))) return rc;
      token_mem = gout[0].device_mem;
      token_to_embedding = m->buf.direct_io;
    }
    if ((rc = sync_device(m))) return rc;
    int32_t t = 0;
    if ((rc = download(m, &t, token_mem, 0, 4, "the next token"))) return rc;
    *tok = t;
  } else {
    if ((rc = sync_device(m))) return rc;
    int v = m->d.vocab_size, es = dtype_size(m->d.logits_dtype);
    if ((rc = download(m, m->smp.logits_raw, out[0].device_mem, 0, (size_t)v * es, "logits"))) return rc;
    int best = 0;
    for (int i = 0; i < v; i++) {
      m->smp.logits[i] = es == 4 ? ((float *)m->smp.logits_raw)[i]
                             : half_to_float(((unsigned short *)m->smp.logits_raw)[i], m->d.logits_dtype);
      if (m->smp.logits[i] > m->smp.logits[best]) best = i;
    }
    *tok = sample ? host_sample(m, m->smp.logits, end) : best;
  }
  if (path && m->smp.head_us[path] <= 0) m->smp.head_us[path] = now_us() - t0;
  m->kv.last_token = *tok;
  m->kv.token_on_device = token_to_embedding;
  return TPC_OK;
}

int tpc_last_logits(tpc_model *m, float *out, int n) {
  if (!m || !out) return TPC_E_ARG;
  if (m->d.lm_head_kind != 2 || m->net.greedy_head)
    return fail(m, TPC_E_ARG, "this bmodel does not return logits to the host");
  if (n < m->d.vocab_size) return fail(m, TPC_E_ARG, "logits buffer too small");
  memcpy(out, m->smp.logits, sizeof(float) * (size_t)m->d.vocab_size);
  return TPC_OK;
}
