/* load.c - open and close a bmodel; inspection for Python. */
#include "shim_internal.h"

/* Arguments, device ids, and the file's own device count, before anything
 * is allocated. */
static int check_open_args(const char *bmodel_path, const int *devids, int num_devids, char *err, int errlen) {
  if (!bmodel_path || !devids || num_devids < 1 || num_devids > MAX_DEVICES) {
    set_err(err, errlen, "bad arguments to open (need a path and 1..%d device ids)", MAX_DEVICES);
    return TPC_E_ARG;
  }
  if (!RT.loaded) {
    set_err(err, errlen, "runtime library not loaded");
    return TPC_E_LIB;
  }
  for (int i = 0; i < num_devids; i++) {
    int rc = check_devid(devids[i], err, errlen);
    if (rc) return rc;
    for (int j = 0; j < i; j++)
      if (devids[j] == devids[i]) {
        set_err(err, errlen, "device %d is listed twice", devids[i]);
        return TPC_E_ARG;
      }
  }
  int file_devices = 1;
  int frc = file_device_num(bmodel_path, &file_devices, err, errlen);
  if (frc) return frc;
  if (file_devices != num_devids) {
    set_err(err, errlen,
            "this bmodel was compiled for %d device%s but %d device id%s given (--devid takes one id per "
            "device, e.g. --devid %s)", file_devices, file_devices == 1 ? "" : "s", num_devids,
            num_devids == 1 ? " was" : "s were", file_devices == 1 ? "0" : file_devices == 2 ? "0,1" : "0,1,...");
    return TPC_E_DEVICE;
  }
  if (num_devids > 1 && !RT.create_ex) {
    set_err(err, errlen, "this libsophon is older than 0.5.1 and cannot drive several devices");
    return TPC_E_LIB;
  }
  return TPC_OK;
}

/* Device handles (borrowed when `handle` is given), the runtime, the bmodel. */
static int load_runtime(tpc_model *m, const char *bmodel_path, const int *devids, int num_devids,
                        bm_handle_t handle, bmapi_mem_info_t *mem) {
  if (handle) {
    m->handles[0] = handle;
    m->devids[0] = devids[0];
    m->num_handles = 1;
    m->borrowed_handles = 1;
  }
  for (int i = 0; i < num_devids && !handle; i++) {
    bm_status_t st = RT.dev_request(&m->handles[i], devids[i]);
    if (st != 0 || !m->handles[i])
      return fail(m, TPC_E_DEVICE, "cannot open device %d (bm_dev_request returned %d)", devids[i], st);
    m->devids[i] = devids[i];
    m->num_handles = i + 1;
  }
  m->rt = num_devids > 1 ? RT.create_ex(m->handles, num_devids) : RT.create(m->handles[0]);
  if (!m->rt) return fail(m, TPC_E_DEVICE, "cannot create the runtime on device %d", devids[0]);
  if (!(mem ? RT.load_bmodel_with_mem(m->rt, bmodel_path, mem) : RT.load_bmodel(m->rt, bmodel_path)))
    return fail(m, TPC_E_LOAD,
                "the runtime could not load %s (corrupt file, a bmodel for another chip, or not "
                "enough device memory; see the log)", bmodel_path);
  m->num_nets = RT.get_network_number(m->rt);
  RT.get_network_names(m->rt, &m->net_names);
  if (m->num_nets <= 0 || !m->net_names) return fail(m, TPC_E_MODEL, "%s holds no networks", bmodel_path);
  return TPC_OK;
}

/* Open a bmodel; with `handle` the model uses that device handle (it stays
 * the caller's), with `mem` the bmodel is loaded into the memory it gives. */
int open_model(const char *bmodel_path, const int *devids, int num_devids, bm_handle_t handle,
               bmapi_mem_info_t *mem, tpc_model **out, char *err, int errlen) {
  if (out) *out = NULL;
  if (!out) return TPC_E_ARG;
  int rc = check_open_args(bmodel_path, devids, num_devids, err, errlen);
  if (rc) return rc;
  tpc_model *m = calloc(1, sizeof *m);
  if (!m) {
    set_err(err, errlen, "out of host memory");
    return TPC_E_NOMEM;
  }
  m->kv.mask_zeros = m->kv.slide_mask_rows = -1;
  m->shared_neuron = mem != NULL;
  m->vis.want_img_pos = m->vis.seq_img_pos = -1;
  if ((rc = load_runtime(m, bmodel_path, devids, num_devids, handle, mem))) goto out;
  if ((rc = describe_nets(m))) goto out;
  if (m->d.num_device != num_devids) {
    rc = fail(m, TPC_E_DEVICE,
              "this bmodel was compiled for %d device%s but %d device id%s given",
              m->d.num_device, m->d.num_device == 1 ? "" : "s", num_devids, num_devids == 1 ? " was" : "s were");
    goto out;
  }
  if (m->d.num_device > 1) rc = md_prepare(m);
  else if (!(rc = check_io(m))) rc = alloc_state(m);
  if (!rc) rc = tpc_reset(m);
out:
  if (rc) {
    set_err(err, errlen, "%s", m->err);
    tpc_close(m);
    return rc;
  }
  *out = m;
  return TPC_OK;
}

int tpc_open(const char *bmodel_path, const int *devids, int num_devids, tpc_model **out, char *err,
             int errlen) {
  return open_model(bmodel_path, devids, num_devids, NULL, NULL, out, err, errlen);
}

void tpc_close(tpc_model *m) {
  if (!m) return;
  md_free(m);
  if (m->buf.own_kv && m->buf.kv_k && m->buf.kv_v) {
    for (int i = 0; i < m->d.num_layers; i++) {
      if (m->buf.kv_k[i].size) RT.free_device(H(m), m->buf.kv_k[i]);
      if (m->buf.kv_v[i].size) RT.free_device(H(m), m->buf.kv_v[i]);
    }
  }
  if (m->buf.prefix_mem.size) RT.free_device(H(m), m->buf.prefix_mem);
  if (m->buf.slide_mask.size) RT.free_device(H(m), m->buf.slide_mask);
  if (m->buf.chunk_hidden.size) RT.free_device(H(m), m->buf.chunk_hidden);
  free(m->kv.prefix_tokens);
  free_vision(m);
  free_share(m);
  if (m->rt) RT.destroy(m->rt);
  for (int i = 0; i < m->num_handles && !m->borrowed_handles; i++)
    if (m->handles[i]) RT.dev_free(m->handles[i]);
  free((void *)m->net_names);
  free(m->net.block);
  free(m->net.block_cache);
  free(m->net.block_kv);
  free(m->buf.kv_k);
  free(m->buf.kv_v);
  free(m->buf.mask_buf);
  free(m->buf.ids_buf);
  free(m->smp.logits);
  free(m->smp.logits_raw);
  free(m->kv.tokens);
  free(m->smp.probs);
  free(m->smp.order);
  free(m);
}

int tpc_describe(const tpc_model *m, tpc_desc *out) {
  if (!m || !out) return TPC_E_ARG;
  *out = m->d;
  return TPC_OK;
}

int tpc_net_info_at(const tpc_model *m, int index, tpc_net_info *out) {
  if (!m || !out || index < 0 || index >= m->num_nets) return TPC_E_ARG;
  net_t n = RT.get_network_info(m->rt, m->net_names[index]);
  if (!n) return TPC_E_ARG;
  out->name = n->name;
  out->is_dynamic = n->is_dynamic;
  out->num_inputs = n->input_num;
  out->num_outputs = n->output_num;
  out->num_stages = n->stage_num;
  out->addr_mode = RT.new_net_info ? n->addr_mode : 0;
  return TPC_OK;
}

int tpc_net_tensor(const tpc_model *m, int net_index, int is_output, int index, int stage,
                   tpc_tensor_info *out) {
  if (!m || !out || net_index < 0 || net_index >= m->num_nets) return TPC_E_ARG;
  net_t n = RT.get_network_info(m->rt, m->net_names[net_index]);
  if (!n || stage < 0 || stage >= n->stage_num) return TPC_E_ARG;
  int count = is_output ? n->output_num : n->input_num;
  if (index < 0 || index >= count) return TPC_E_ARG;
  const bmapi_shape_t *s = is_output ? &n->stages[stage].output_shapes[index]
                                     : &n->stages[stage].input_shapes[index];
  out->name = is_output ? n->output_names[index] : n->input_names[index];
  out->dtype = is_output ? n->output_dtypes[index] : n->input_dtypes[index];
  out->num_dims = s->num_dims;
  for (int i = 0; i < 8; i++) out->dims[i] = i < s->num_dims ? s->dims[i] : 0;
  const int *loc = RT.new_net_info ? (is_output ? n->output_loc_devices : n->input_loc_devices) : NULL;
  out->device = loc ? loc[index] : 0;
  return TPC_OK;
}

int tpc_device_stat_at(const tpc_model *m, int index, tpc_device_stat *out) {
  if (!m || !out || index < 0 || index >= m->num_handles) return TPC_E_ARG;
  fill_stat(m->handles[index], m->devids[index], out);
  return TPC_OK;
}

/* The device count a bmodel file was compiled for, read from its own
 * description (FlatBuffers: Model.device_num, field 7) before the runtime
 * sees the file: a mismatched count must be an error, not a crash. */
int file_device_num(const char *path, int *out, char *err, int errlen) {
  *out = 1;
  FILE *f = fopen(path, "rb");
  if (!f) {
    set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return TPC_E_LOAD;
  }
  uint32_t head[3];
  int rc = TPC_OK;
  unsigned char *fb = NULL;
  if (fread(head, 4, 3, f) != 3 || head[0] != 0xFF55AAEEu || head[2] < 8) {
    set_err(err, errlen, "%s is not a bmodel (bad header)", path);
    rc = TPC_E_LOAD;
    goto done;
  }
  fb = malloc(head[2]);
  if (!fb || fseek(f, (long)head[1], SEEK_SET) != 0 || fread(fb, 1, head[2], f) != head[2]) {
    set_err(err, errlen, "%s is truncated: its model description is incomplete", path);
    rc = TPC_E_LOAD;
    goto done;
  }
  uint32_t size = head[2], root, field_off = 0;
  int32_t soff;
  uint16_t vt_len;
  memcpy(&root, fb, 4);
  if (root + 4 > size) goto bad;
  memcpy(&soff, fb + root, 4);
  int64_t vt = (int64_t)root - soff;
  if (vt < 0 || vt + 4 > size) goto bad;
  memcpy(&vt_len, fb + vt, 2);
  if (vt_len >= 4 + 2 * 8 && vt + 4 + 2 * 8 <= size) {
    uint16_t o;
    memcpy(&o, fb + vt + 4 + 2 * 7, 2);
    field_off = o;
  }
  if (field_off) {
    uint32_t n;
    if (root + field_off + 4 > size) goto bad;
    memcpy(&n, fb + root + field_off, 4);
    *out = n > 0 ? (int)n : 1;
  }
  goto done;
bad:
  set_err(err, errlen, "%s: damaged model description", path);
  rc = TPC_E_LOAD;
done:
  free(fb);
  fclose(f);
  return rc;
}
