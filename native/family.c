/* family.c - model families: one weight area for bmodels of the same weights. */
#include "shim_internal.h"

#define MAX_MEMBERS 8
_Static_assert(sizeof(bmapi_region_t) == 152, "memory_t layout");

_Static_assert(sizeof(bmapi_mem_info_t) == 1368, "mem_info_t layout");

_Static_assert(sizeof(bmapi_mem64_t) == 32, "bm_device_mem_u64_t layout");

/* A device allocation that remembers which call made it. */
typedef struct {
  bmapi_mem64_t mem64;
  bmapi_mem_t mem32;
  int wide, used;
} dev_area;

struct tpc_family {
  char err[ERR_LEN];
  char share_note[200];       /* why the weights are not shared, if so */
  int n, active, shared;
  char *paths[MAX_MEMBERS];
  bmapi_mem_info_t info[MAX_MEMBERS]; /* each member's regions, from the runtime */
  int devid;
  bm_handle_t handle;
  dev_area weights;                   /* the shared weight area */
  unsigned long long weight_bytes;
  dev_area regions[4];                /* the active member's other regions */
  tpc_model *model;                   /* the active member */
  double last_switch_us;
};

static int area_alloc(bm_handle_t h, dev_area *a, unsigned long long size) {
  memset(a, 0, sizeof *a);
  if (RT.malloc_device_u64 && RT.free_device_u64) {
    if (RT.malloc_device_u64(h, &a->mem64, size) != 0) return -1;
    a->wide = 1;
  } else {
    if (size > 0xFFFFFFFFull || RT.malloc_device_byte(h, &a->mem32, (unsigned int)size) != 0) return -1;
  }
  a->used = 1;
  return 0;
}

static unsigned long long area_addr(const dev_area *a) {
  return a->wide ? a->mem64.device_addr : a->mem32.device_addr;
}

static void area_free(bm_handle_t h, dev_area *a) {
  if (!a->used) return;
  if (a->wide) RT.free_device_u64(h, a->mem64);
  else RT.free_device(h, a->mem32);
  a->used = 0;
}

static int ffail(tpc_family *f, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(f->err, sizeof f->err, fmt, ap);
  va_end(ap);
  return code;
}

const char *tpc_family_error(const tpc_family *f) { return f ? f->err : "no model family"; }

int tpc_bmodel_memory_of(const char *bmodel_path, tpc_bmodel_memory *out, char *err, int errlen) {
  if (!bmodel_path || !out) return TPC_E_ARG;
  if (!RT.loaded) {
    set_err(err, errlen, "runtime library not loaded");
    return TPC_E_LIB;
  }
  if (!RT.get_bmodel_info) {
    set_err(err, errlen, "the runtime in %s has no bmrt_get_bmodel_info (libsophon too old)", RT.dir);
    return TPC_E_LIB;
  }
  bmapi_mem_info_t info;
  memset(&info, 0, sizeof info);
  if (!RT.get_bmodel_info(bmodel_path, &info)) {
    set_err(err, errlen, "the runtime could not read the memory layout of %s", bmodel_path);
    return TPC_E_LOAD;
  }
  out->weight_bytes = (long long)info.coeff.size;
  out->instruction_bytes = (long long)(info.instruction.size + info.variable_instruction.size);
  out->neuron_bytes = (long long)info.neuron.size;
  out->io_bytes = (long long)info.io.size;
  return TPC_OK;
}

/* FNV-1a over a net's weight tensors (names, offsets from the first, sizes):
 * two nets may share one copy only when these agree. */
static unsigned long long coeff_signature(const bmapi_coeff_info_t *c, int n, unsigned long long lo) {
  unsigned long long h = 1469598103934665603ull;
  for (int i = 0; i < n; i++) {
    unsigned long long v[2] = {c[i].device_mem.device_addr - lo, c[i].device_mem.size};
    const unsigned char *p = (const unsigned char *)c[i].path;
    for (size_t k = 0; k < sizeof c[i].path && p[k]; k++) h = (h ^ p[k]) * 1099511628211ull;
    p = (const unsigned char *)v;
    for (size_t k = 0; k < sizeof v; k++) h = (h ^ p[k]) * 1099511628211ull;
  }
  return h;
}

int tpc_check_weight_ranges(const unsigned long long *lo, const unsigned long long *hi,
                            const unsigned long long *sig, const char *const *names, int n,
                            unsigned long long area_lo, unsigned long long area_hi, char *why, int whylen) {
  if (n < 0 || (n && (!lo || !hi || !sig))) return TPC_E_ARG;
  for (int i = 0; i < n; i++) {
    const char *ni = names && names[i] ? names[i] : "?";
    if (hi[i] < lo[i] || lo[i] < area_lo || hi[i] > area_hi) {
      set_err(why, whylen, "the weights of net %s lie outside the weight area", ni);
      return TPC_E_LOAD;
    }
    for (int j = 0; j < i; j++) {
      if (lo[i] >= hi[j] || lo[j] >= hi[i]) continue; /* apart */
      if (lo[i] == lo[j] && hi[i] == hi[j] && sig[i] == sig[j]) continue; /* one shared copy */
      set_err(why, whylen,
              "the runtime put the weights of nets %s and %s at the same device memory "
              "(offsets 0x%llx and 0x%llx of the weight area)",
              names && names[j] ? names[j] : "?", ni, lo[j] - area_lo, lo[i] - area_lo);
      return TPC_E_LOAD;
    }
  }
  return TPC_OK;
}

/* After a load into the shared weight area: did the runtime give every net's
 * weights a place of their own?  (TPU-MLIR 1.30's runtime gives each net the
 * whole area, so all of them land at its start.)  Runtimes that cannot say
 * where the weights went (no bmrt_get_coeff_info) are not trusted. */
static int check_placement(tpc_family *f, char *why, int whylen) {
  if (!RT.get_coeff_info) {
    set_err(why, whylen, "this runtime cannot report where it put the weights (no bmrt_get_coeff_info)");
    return TPC_E_LIB;
  }
  tpc_model *m = f->model;
  int cap = 0, n = 0, rc = TPC_OK;
  for (int i = 0; i < m->num_nets; i++) {
    const bmapi_net_info_t *ni = RT.get_network_info(m->rt, m->net_names[i]);
    cap += ni ? ni->stage_num : 0;
  }
  unsigned long long *lo = calloc((size_t)cap + 1, sizeof *lo), *hi = calloc((size_t)cap + 1, sizeof *hi),
                     *sig = calloc((size_t)cap + 1, sizeof *sig);
  const char **names = calloc((size_t)cap + 1, sizeof *names);
  if (!lo || !hi || !sig || !names) {
    set_err(why, whylen, "out of host memory");
    rc = TPC_E_NOMEM;
    goto out;
  }
  for (int i = 0; i < m->num_nets; i++) {
    const bmapi_net_info_t *ni = RT.get_network_info(m->rt, m->net_names[i]);
    for (int s = 0; ni && s < ni->stage_num && n < cap; s++) {
      int k = 0;
      const bmapi_coeff_info_t *c = RT.get_coeff_info(m->rt, m->net_names[i], s, &k);
      if (!c || k <= 0) continue; /* a net without weights */
      unsigned long long a = ~0ull, b = 0;
      for (int t = 0; t < k; t++) {
        unsigned long long x = c[t].device_mem.device_addr;
        if (x < a) a = x;
        if (x + c[t].device_mem.size > b) b = x + c[t].device_mem.size;
      }
      lo[n] = a;
      hi[n] = b;
      sig[n] = coeff_signature(c, k, a);
      names[n++] = m->net_names[i];
    }
  }
  unsigned long long base = area_addr(&f->weights);
  rc = tpc_check_weight_ranges(lo, hi, sig, names, n, base, base + f->weight_bytes, why, whylen);
out:
  free(lo);
  free(hi);
  free(sig);
  free(names);
  return rc;
}

/* Free the active member: its runtime and its non-weight regions. */
static void unload_member(tpc_family *f) {
  if (f->model) tpc_close(f->model);
  f->model = NULL;
  for (int i = 0; i < 4; i++) area_free(f->handle, &f->regions[i]);
  f->active = -1;
}

int tpc_family_switch(tpc_family *f, int index) {
  if (!f) return TPC_E_ARG;
  if (index < 0 || index >= f->n) return ffail(f, TPC_E_ARG, "no member %d in this model family", index);
  if (index == f->active && f->model) return TPC_OK;
  double t0 = now_us();
  unload_member(f);
  char err[ERR_LEN] = "";
  int rc;
  if (f->shared) {
    bmapi_mem_info_t mem = f->info[index];
    bmapi_region_t *own[4] = {&mem.instruction, &mem.variable_instruction, &mem.neuron, &mem.io};
    static const char *const what[4] = {"instructions", "instructions", "activations", "IO buffers"};
    for (int i = 0; i < 4; i++) {
      own[i]->addr = -1;
      if (own[i]->size == 0) continue;
      if (area_alloc(f->handle, &f->regions[i], own[i]->size)) {
        unload_member(f);
        return ffail(f, TPC_E_NOMEM, "not enough device memory for the %s of %s (%llu bytes)", what[i],
                     f->paths[index], (unsigned long long)own[i]->size);
      }
      own[i]->addr = (int64_t)area_addr(&f->regions[i]);
    }
    mem.coeff.addr = (int64_t)area_addr(&f->weights);
    mem.coeff.size = f->weight_bytes;
    rc = open_model(f->paths[index], &f->devid, 1, f->handle, &mem, &f->model, err, sizeof err);
    if (rc == TPC_OK && check_placement(f, f->share_note, sizeof f->share_note) != TPC_OK) {
      /* Wrong weights would give wrong answers: give the area back and load
       * each member whole from now on. */
      unload_member(f);
      area_free(f->handle, &f->weights);
      f->shared = 0;
      f->weight_bytes = 0;
      rc = open_model(f->paths[index], &f->devid, 1, f->handle, NULL, &f->model, err, sizeof err);
    }
  } else {
    rc = open_model(f->paths[index], &f->devid, 1, f->handle, NULL, &f->model, err, sizeof err);
  }
  if (rc) {
    unload_member(f);
    return ffail(f, rc, "%s", err);
  }
  f->active = index;
  f->last_switch_us = now_us() - t0;
  return TPC_OK;
}

int tpc_family_open(const char *const *paths, int num_paths, const int *devids, int num_devids, int first,
                    int share_weights, tpc_family **out, char *err, int errlen) {
  if (out) *out = NULL;
  if (!out || !paths || num_paths < 1 || num_paths > MAX_MEMBERS || !devids || num_devids < 1 || first < 0 ||
      first >= num_paths) {
    set_err(err, errlen, "bad arguments to open a model family (1..%d bmodels)", MAX_MEMBERS);
    return TPC_E_ARG;
  }
  if (num_devids > 1) {
    set_err(err, errlen, "sharing weights between bmodels works on one device only (%d given)", num_devids);
    return TPC_E_ARG;
  }
  if (!RT.loaded) {
    set_err(err, errlen, "runtime library not loaded");
    return TPC_E_LIB;
  }
  int rc = check_devid(devids[0], err, errlen);
  if (rc) return rc;
  tpc_family *f = calloc(1, sizeof *f);
  if (!f) {
    set_err(err, errlen, "out of host memory");
    return TPC_E_NOMEM;
  }
  f->n = num_paths;
  f->active = -1;
  f->devid = devids[0];
  f->shared = share_weights && RT.get_bmodel_info && RT.load_bmodel_with_mem;
  if (share_weights && !f->shared)
    snprintf(f->share_note, sizeof f->share_note,
             "this runtime cannot load a bmodel into given memory (no bmrt_load_bmodel_with_mem)");
  for (int i = 0; i < num_paths; i++) {
    if (!paths[i] || !(f->paths[i] = strdup(paths[i]))) {
      rc = ffail(f, TPC_E_ARG, "bad bmodel path");
      goto out;
    }
    if (f->shared) {
      if (!RT.get_bmodel_info(paths[i], &f->info[i])) {
        rc = ffail(f, TPC_E_LOAD, "the runtime could not read the memory layout of %s (damaged bmodel?)", paths[i]);
        goto out;
      }
      if (f->info[i].coeff.size > f->weight_bytes) f->weight_bytes = f->info[i].coeff.size;
    }
  }
  bm_status_t st = RT.dev_request(&f->handle, f->devid);
  if (st != 0 || !f->handle) {
    f->handle = NULL;
    rc = ffail(f, TPC_E_DEVICE, "cannot open device %d (bm_dev_request returned %d)", f->devid, st);
    goto out;
  }
  /* The weight area is as large as the largest member needs: lengths change
   * the position tables that sit beside the weights. */
  if (f->shared && f->weight_bytes && area_alloc(f->handle, &f->weights, f->weight_bytes)) {
    rc = ffail(f, TPC_E_NOMEM, "not enough device memory for the weights (%llu MB)", f->weight_bytes >> 20);
    goto out;
  }
  rc = tpc_family_switch(f, first);
out:
  if (rc) {
    set_err(err, errlen, "%s", f->err);
    tpc_family_close(f);
    return rc;
  }
  *out = f;
  return TPC_OK;
}

tpc_model *tpc_family_model(tpc_family *f) { return f ? f->model : NULL; }

int tpc_family_get_info(const tpc_family *f, tpc_family_info *out) {
  if (!f || !out) return TPC_E_ARG;
  out->num_members = f->n;
  out->active = f->active;
  out->shared = f->shared;
  out->weight_bytes = f->shared ? (long long)f->weight_bytes : 0;
  out->last_switch_us = f->last_switch_us;
  snprintf(out->share_note, sizeof out->share_note, "%s", f->share_note);
  return TPC_OK;
}

void tpc_family_close(tpc_family *f) {
  if (!f) return;
  unload_member(f);
  if (f->handle) {
    area_free(f->handle, &f->weights);
    RT.dev_free(f->handle);
  }
  for (int i = 0; i < f->n; i++) free(f->paths[i]);
  free(f);
}
