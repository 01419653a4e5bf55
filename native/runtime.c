/* runtime.c - load libbmlib/libbmrt at run time, resolve the calls we use, devices. */
#include "shim_internal.h"

#include <dlfcn.h>
#include <time.h>

shim_runtime RT;

_Static_assert(sizeof(bmapi_shape_t) == 36, "bm_shape_t layout");

_Static_assert(sizeof(bmapi_mem_t) == 24, "bm_device_mem_t layout");

_Static_assert(sizeof(bmapi_tensor_t) == 72, "bm_tensor_t layout");

_Static_assert(offsetof(bmapi_tensor_t, device_mem) == 40, "bm_tensor_t layout");

_Static_assert(offsetof(bmapi_tensor_t, st_mode) == 64, "bm_tensor_t layout");

_Static_assert(offsetof(bmapi_net_info_t, stages) == 80, "bm_net_info_t layout");

_Static_assert(offsetof(bmapi_net_info_t, input_loc_devices) == 120, "bm_net_info_t layout");

_Static_assert(offsetof(bmapi_net_info_t, addr_mode) == 140, "bm_net_info_t layout");

_Static_assert(sizeof(bmapi_net_info_t) == 144, "bm_net_info_t layout");

void set_err(char *err, int errlen, const char *fmt, ...) {
  if (!err || errlen <= 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, (size_t)errlen, fmt, ap);
  va_end(ap);
}

static void *open_first(const char *dir, const char *const *names, char *tried, size_t tried_len) {
  char path[1200];
  for (int i = 0; names[i]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    /* RTLD_GLOBAL + lookups through RTLD_DEFAULT let LD_PRELOAD profilers
     * see every runtime call. */
    void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (h) return h;
    const char *why = dlerror();
    size_t used = strlen(tried);
    snprintf(tried + used, tried_len - used, "%s%s", used ? "; " : "", why ? why : path);
  }
  return NULL;
}

#define RESOLVE(field, sym)                                                        \
  do {                                                                             \
    *(void **)(&RT.field) = dlsym(RTLD_DEFAULT, sym);                              \
    if (!RT.field) {                                                               \
      set_err(err, errlen, "the runtime in %s has no function %s (libsophon too old?)", \
              lib_dir, sym);                                                       \
      return TPC_E_LIB;                                                            \
    }                                                                              \
  } while (0)

int tpc_runtime_load(const char *lib_dir, char *err, int errlen) {
  if (RT.loaded) {
    if (lib_dir && strcmp(lib_dir, RT.dir) != 0) {
      set_err(err, errlen, "runtime already loaded from %s; cannot switch to %s in one process",
              RT.dir, lib_dir);
      return TPC_E_LIB;
    }
    return TPC_OK;
  }
  if (!lib_dir || !*lib_dir) {
    set_err(err, errlen, "no runtime library directory given");
    return TPC_E_ARG;
  }
  static const char *const bmlib_names[] = {"libbmlib.so.0", "libbmlib.so", NULL};
  static const char *const bmrt_names[] = {"libbmrt.so.1.0", "libbmrt.so.1", "libbmrt.so", NULL};
  char tried[2048] = "";
  if (!open_first(lib_dir, bmlib_names, tried, sizeof tried)) {
    set_err(err, errlen, "cannot load libbmlib from %s: %s", lib_dir, tried);
    return TPC_E_LIB;
  }
  tried[0] = 0;
  if (!open_first(lib_dir, bmrt_names, tried, sizeof tried)) {
    set_err(err, errlen, "cannot load libbmrt from %s: %s", lib_dir, tried);
    return TPC_E_LIB;
  }
  RESOLVE(dev_getcount, "bm_dev_getcount");
  RESOLVE(dev_request, "bm_dev_request");
  RESOLVE(dev_free, "bm_dev_free");
  RESOLVE(get_stat, "bm_get_stat");
  RESOLVE(thread_sync, "bm_thread_sync");
  RESOLVE(malloc_device_byte, "bm_malloc_device_byte");
  RESOLVE(free_device, "bm_free_device");
  RESOLVE(s2d, "bm_memcpy_s2d_partial_offset");
  RESOLVE(d2s, "bm_memcpy_d2s_partial_offset");
  RESOLVE(d2d, "bm_memcpy_d2d_byte");
  RESOLVE(memset_device, "bm_memset_device");
  RESOLVE(create, "bmrt_create");
  RESOLVE(destroy, "bmrt_destroy");
  RESOLVE(load_bmodel, "bmrt_load_bmodel");
  RESOLVE(get_network_number, "bmrt_get_network_number");
  RESOLVE(get_network_names, "bmrt_get_network_names");
  RESOLVE(get_network_info, "bmrt_get_network_info");
  RESOLVE(launch_tensor_ex, "bmrt_launch_tensor_ex");
  *(void **)(&RT.create_ex) = dlsym(RTLD_DEFAULT, "bmrt_create_ex");
  RT.new_net_info = RT.create_ex != NULL;
  *(void **)(&RT.get_bmodel_info) = dlsym(RTLD_DEFAULT, "bmrt_get_bmodel_info");
  *(void **)(&RT.load_bmodel_with_mem) = dlsym(RTLD_DEFAULT, "bmrt_load_bmodel_with_mem");
  *(void **)(&RT.get_coeff_info) = dlsym(RTLD_DEFAULT, "bmrt_get_coeff_info");
  *(void **)(&RT.malloc_device_u64) = dlsym(RTLD_DEFAULT, "bm_malloc_device_byte_u64");
  *(void **)(&RT.free_device_u64) = dlsym(RTLD_DEFAULT, "bm_free_device_u64");
  snprintf(RT.dir, sizeof RT.dir, "%s", lib_dir);
  RT.loaded = 1;
  return TPC_OK;
}

int tpc_device_count(int *count, char *err, int errlen) {
  if (!RT.loaded) {
    set_err(err, errlen, "runtime library not loaded");
    return TPC_E_LIB;
  }
  int n = 0;
  bm_status_t st = RT.dev_getcount(&n);
  if (st != 0) {
    set_err(err, errlen, "no Sophgo device found (bm_dev_getcount returned %d)", st);
    return TPC_E_DEVICE;
  }
  *count = n;
  return TPC_OK;
}

int check_devid(int devid, char *err, int errlen) {
  int n = 0;
  int rc = tpc_device_count(&n, err, errlen);
  if (rc) return rc;
  if (devid < 0 || devid >= n) {
    set_err(err, errlen, "device %d does not exist (%d device%s found: ids 0..%d)", devid, n,
            n == 1 ? "" : "s", n - 1);
    return TPC_E_DEVICE;
  }
  return TPC_OK;
}

void fill_stat(bm_handle_t h, int devid, tpc_device_stat *out) {
  bmapi_dev_stat_t st;
  memset(&st, 0, sizeof st);
  memset(out, 0, sizeof *out);
  out->devid = devid;
  if (RT.get_stat(h, &st) == 0) {
    out->mem_total_mb = st.mem_total;
    out->mem_used_mb = st.mem_used;
    out->tpu_util = st.tpu_util;
  } else {
    out->mem_total_mb = out->mem_used_mb = out->tpu_util = -1;
  }
}

int tpc_device_stat_of(int devid, tpc_device_stat *out, char *err, int errlen) {
  int rc = check_devid(devid, err, errlen);
  if (rc) return rc;
  bm_handle_t h = NULL;
  bm_status_t st = RT.dev_request(&h, devid);
  if (st != 0 || !h) {
    set_err(err, errlen, "cannot open device %d (bm_dev_request returned %d)", devid, st);
    return TPC_E_DEVICE;
  }
  fill_stat(h, devid, out);
  RT.dev_free(h);
  return TPC_OK;
}

double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}
