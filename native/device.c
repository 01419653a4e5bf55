/* device.c - checked copies, allocations and launches; call timing. */
#include "shim_internal.h"

bm_handle_t H(tpc_model *m) { return m->handles[0]; }

/* A view of part of a device buffer. */
bmapi_mem_t mem_at(bmapi_mem_t base, size_t offset, size_t size) {
  bmapi_mem_t v = base;
  v.device_addr += offset;
  v.size = (unsigned int)size;
  return v;
}

/* The KV cache of one layer from row `row` to its end. */
bmapi_mem_t kv_view(tpc_model *m, bmapi_mem_t cache, int row) {
  return mem_at(cache, (size_t)row * m->buf.kv_row_bytes, (size_t)(m->d.kv_len - row) * m->buf.kv_row_bytes);
}

int upload(tpc_model *m, bmapi_mem_t dst, size_t offset, const void *src, size_t size,
                  const char *what) {
  m->stats.timing.copies++;
  bm_status_t st = TIMED(RT.s2d(H(m), dst, (void *)src, (unsigned int)size, (unsigned int)offset));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "copy of %s to the device failed (status %d)", what, st);
  return TPC_OK;
}

int download(tpc_model *m, void *dst, bmapi_mem_t src, size_t offset, size_t size,
                    const char *what) {
  m->stats.timing.copies++;
  bm_status_t st = TIMED(RT.d2s(H(m), dst, src, (unsigned int)size, (unsigned int)offset));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "copy of %s from the device failed (status %d)", what, st);
  return TPC_OK;
}

int copy_d2d(tpc_model *m, bmapi_mem_t dst, size_t dst_off, bmapi_mem_t src, size_t src_off,
                    size_t size, const char *what) {
  m->stats.timing.copies++;
  bm_status_t st = TIMED(RT.d2d(H(m), dst, dst_off, src, src_off, size));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "device copy of %s failed (status %d)", what, st);
  return TPC_OK;
}

int zero(tpc_model *m, bmapi_mem_t mem, const char *what) {
  bm_status_t st = TIMED(RT.memset_device(H(m), 0, mem));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "clearing %s failed (status %d)", what, st);
  return TPC_OK;
}

bmapi_tensor_t tensor(bmapi_mem_t mem, int dtype, const bmapi_shape_t *shape) {
  bmapi_tensor_t t;
  memset(&t, 0, sizeof t);
  t.dtype = dtype;
  t.shape = *shape;
  t.device_mem = mem;
  return t;
}

/* Tensors over a stage's own buffers, shapes optionally overridden later. */
void own_tensors(net_t n, int stage, bmapi_tensor_t *in, bmapi_tensor_t *out) {
  const bmapi_stage_t *s = &n->stages[stage];
  for (int i = 0; i < n->input_num; i++)
    in[i] = tensor(s->input_mems[i], n->input_dtypes[i], &s->input_shapes[i]);
  for (int i = 0; i < n->output_num; i++)
    out[i] = tensor(s->output_mems[i], n->output_dtypes[i], &s->output_shapes[i]);
}

int launch(tpc_model *m, net_t n, bmapi_tensor_t *in, bmapi_tensor_t *out) {
  m->stats.timing.launches++;
  bool ok = TIMED(RT.launch_tensor_ex(m->rt, n->name, in, n->input_num, out, n->output_num, true, false));
  if (!ok) return fail(m, TPC_E_RUNTIME, "the runtime refused to launch net %s", n->name);
  return TPC_OK;
}

int sync_device(tpc_model *m) {
  bm_status_t st = TIMED(RT.thread_sync(H(m)));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "device failed while running the model (status %d)", st);
  return TPC_OK;
}

/* Smallest stage of net n whose first input holds len tokens. */
int pick_stage(net_t n, int len) {
  int best = -1;
  for (int s = 0; s < n->stage_num; s++) {
    int cap = n->stages[s].input_shapes[0].dims[1];
    if (cap >= len && (best < 0 || cap < n->stages[best].input_shapes[0].dims[1])) best = s;
  }
  return best;
}

void set_len(bmapi_shape_t *s, int len) { s->dims[1] = len; }

void begin_call(tpc_model *m) {
  memset(&m->stats.timing, 0, sizeof m->stats.timing);
  m->stats.device_us = 0;
  m->stats.call_start = now_us();
}

void end_call(tpc_model *m) {
  m->stats.timing.total_us = now_us() - m->stats.call_start;
  m->stats.timing.device_us = m->stats.device_us;
  m->stats.timing.host_us = m->stats.timing.total_us - m->stats.device_us;
}

int dev_alloc(tpc_model *m, bmapi_mem_t *mem, size_t bytes, const char *what) {
  if (RT.malloc_device_byte(H(m), mem, (unsigned int)bytes) != 0) {
    memset(mem, 0, sizeof *mem);
    return fail(m, TPC_E_NOMEM, "not enough device memory for %s (%zu bytes)", what, bytes);
  }
  return TPC_OK;
}
