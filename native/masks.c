/* masks.c - attention masks (bf16/f16, or f32 with the convention's value)
 * and half-float conversions. */
#include "shim_internal.h"

/* -10000 is the "minus infinity" the converted nets expect. */
unsigned short mask_min(int dtype) { return dtype == BMAPI_BF16 ? 0xC61C : 0xF0E2; }

/* Host scratch for `elems` mask entries of up to 4 bytes (f32 masks). */
int ensure_mask_buf(tpc_model *m, size_t elems) {
  if (m->buf.mask_buf_elems >= elems) return TPC_OK;
  unsigned short *p = realloc(m->buf.mask_buf, elems * sizeof(float));
  if (!p) return fail(m, TPC_E_NOMEM, "out of host memory for a %zu-entry mask", elems);
  m->buf.mask_buf = p;
  m->buf.mask_buf_elems = elems;
  return TPC_OK;
}

/* Causal prefill mask rows x cols: row i (< n) sees columns j <= i. */
void build_prefill_mask(unsigned short *buf, int rows, int cols, int n, unsigned short neg) {
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) buf[(size_t)i * cols + j] = (i < n && j <= i) ? 0 : neg;
}

/* Entry i of the mask scratch in `dtype`: 0 (visible) or the mask value (hidden). */
static void put_mask(tpc_model *m, int dtype, size_t i, int hidden) {
  if (dtype == BMAPI_F32) {
    float v = hidden ? m->buf.mask_value : 0.0f;
    memcpy((char *)m->buf.mask_buf + 4 * i, &v, 4);
  } else {
    unsigned short neg = m->buf.mask_value == -10000.0f ? mask_min(dtype) : float_to_half(m->buf.mask_value, dtype);
    m->buf.mask_buf[i] = hidden ? neg : 0;
  }
}

/* build_prefill_mask for any mask dtype and the convention's mask value
 * (the caller made room with ensure_mask_buf). */
void build_prefill_mask_as(tpc_model *m, int dtype, int rows, int cols, int n) {
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) put_mask(m, dtype, (size_t)i * cols + j, !(i < n && j <= i));
}

/* The sliding layout's decode mask (L + 1 entries, our own device buffer):
 * the window's p rows in use are its last ones, then the new token's entry,
 * so entries [0, L - p) are hidden.  Only the entries that change go up. */
int update_sliding_mask(tpc_model *m, int p) {
  int L = m->d.kv_len, dt = m->d.mask_dtype, es = dtype_size(dt), old = m->kv.slide_mask_rows, rc;
  int lo = 0, hi = L + 1; /* entries to write */
  if (old == p) return TPC_OK;
  if (old >= 0) {
    lo = L - (old > p ? old : p);
    hi = L - (old > p ? p : old);
  }
  if ((rc = ensure_mask_buf(m, (size_t)(hi - lo)))) return rc;
  for (int j = lo; j < hi; j++) put_mask(m, dt, (size_t)(j - lo), j < L - p);
  if ((rc = upload(m, m->buf.slide_mask, (size_t)lo * es, m->buf.mask_buf, (size_t)(hi - lo) * es, "decode mask")))
    return rc;
  m->kv.slide_mask_rows = p;
  return TPC_OK;
}

float half_to_float(unsigned short h, int dtype) {
  if (dtype == BMAPI_BF16) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
  }
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal */
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; exp--; }
      u = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000 | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Bring the decode mask to "entries [0, p) and the last visible", writing
 * only the entries that differ from what the device holds. */
int update_decode_mask(tpc_model *m, bmapi_mem_t mask_mem, int p) {
  int L = m->d.kv_len, rc;
  unsigned short neg = mask_min(m->d.mask_dtype);
  if (m->kv.mask_zeros < 0) {
    if ((rc = ensure_mask_buf(m, (size_t)L + 1))) return rc;
    for (int j = 0; j <= L; j++) m->buf.mask_buf[j] = (j < p || j == L) ? 0 : neg;
    if ((rc = upload(m, mask_mem, 0, m->buf.mask_buf, (size_t)(L + 1) * 2, "decode mask"))) return rc;
  } else if (m->kv.mask_zeros != p) {
    int lo = m->kv.mask_zeros < p ? m->kv.mask_zeros : p, hi = m->kv.mask_zeros < p ? p : m->kv.mask_zeros;
    unsigned short v = m->kv.mask_zeros < p ? 0 : neg;
    if ((rc = ensure_mask_buf(m, (size_t)(hi - lo)))) return rc;
    for (int j = 0; j < hi - lo; j++) m->buf.mask_buf[j] = v;
    if ((rc = upload(m, mask_mem, (size_t)lo * 2, m->buf.mask_buf, (size_t)(hi - lo) * 2, "decode mask")))
      return rc;
  }
  m->kv.mask_zeros = m->buf.direct_io ? p : -1;
  return TPC_OK;
}

unsigned short half_one(int dtype) { return dtype == BMAPI_BF16 ? 0x3F80 : 0x3C00; }

unsigned short float_to_half(float f, int dtype) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if (dtype == BMAPI_BF16) {
    if ((u & 0x7fffffff) > 0x7f800000) return 0x7fc0; /* NaN */
    return (unsigned short)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
  }
  uint32_t sign = (u >> 16) & 0x8000;
  int exp = (int)((u >> 23) & 0xff) - 127 + 15;
  uint32_t man = u & 0x7fffff;
  if (exp >= 31) return (unsigned short)(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return (unsigned short)sign;
    man |= 0x800000;
    uint32_t shift = (uint32_t)(14 - exp);
    uint32_t h = man >> shift;
    if ((man >> (shift - 1)) & 1) h++;
    return (unsigned short)(sign | h);
  }
  uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
  if (man & 0x1000) h++; /* round half up */
  return (unsigned short)h;
}
