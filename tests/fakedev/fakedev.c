/*
 * fakedev.c - present N BM1684X devices on the one-device simulator (tests only).
 *
 * The chip's C model (libbmlib of TPU-MLIR's wheel) has exactly one device:
 * bm_dev_getcount writes 1 and bm_dev_request(&h, 1) exits the process.  This
 * LD_PRELOAD library makes devices 0..N-1 (N = $TPUCHAT_FAKE_DEVICES, default
 * 2) out of that one:
 *   - bm_dev_getcount reports N;
 *   - bm_dev_request(id < N) opens the real device 0 (libbmlib counts the
 *     references) and remembers which id this handle stands for;
 *   - bm_get_devid answers that id;
 *   - bm_memcpy_p2p / bm_memcpy_c2c copy with bm_memcpy_d2d_byte: every fake
 *     device lives in the one simulated memory, so that is the real data
 *     movement (under the C model p2p returns success without copying and c2c
 *     is unsupported).
 * With TPUCHAT_FAKEDEV_TRACE=FILE every call it sees is appended to FILE with its
 * return code, for checking what the runtime does between devices.
 *
 * libbmrt and the shim both resolve these names through the global scope, so
 * the preload sees the runtime's own calls too.  Build:
 *   cc -shared -fPIC -O2 -o libfakedev.so fakedev.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../native/bmrt_api.h"

#define MAX_HANDLES 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct { bm_handle_t h; int id; } handles[MAX_HANDLES];

static int fake_count(void) {
  const char *s = getenv("TPUCHAT_FAKE_DEVICES");
  int n = s ? atoi(s) : 2;
  return n > 0 ? n : 1;
}

static void *real(const char *name) {
  void *f = dlsym(RTLD_NEXT, name);
  if (!f) {
    fprintf(stderr, "fakedev: %s not found in the runtime libraries\n", name);
    abort();
  }
  return f;
}

static void trace(const char *fmt, ...) {
  static FILE *out;
  static int opened;
  pthread_mutex_lock(&lock);
  if (!opened) {
    const char *path = getenv("TPUCHAT_FAKEDEV_TRACE");
    out = path && *path ? fopen(path, "a") : NULL;
    opened = 1;
  }
  if (out) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
    fflush(out);
  }
  pthread_mutex_unlock(&lock);
}

static int id_of(bm_handle_t h) {
  int id = -1;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < MAX_HANDLES; i++)
    if (handles[i].h == h) id = handles[i].id;
  pthread_mutex_unlock(&lock);
  return id;
}

bm_status_t bm_dev_getcount(int *count) {
  *count = fake_count();
  return 0;
}

bm_status_t bm_dev_request(bm_handle_t *handle, int devid) {
  static bm_status_t (*fn)(bm_handle_t *, int);
  if (!fn) fn = real("bm_dev_request");
  if (devid < 0 || devid >= fake_count()) {
    trace("bm_dev_request(%d) -> refused (fake devices: %d)", devid, fake_count());
    return 1; /* BM_ERR_FAILURE: what a missing device gives on a board */
  }
  bm_status_t st = fn(handle, 0);
  if (st == 0) {
    pthread_mutex_lock(&lock);
    int slot = -1;
    for (int i = 0; i < MAX_HANDLES && slot < 0; i++)
      if (!handles[i].h || handles[i].h == *handle) slot = i;
    if (slot >= 0) {
      handles[slot].h = *handle;
      handles[slot].id = devid;
    }
    pthread_mutex_unlock(&lock);
  }
  trace("bm_dev_request(%d) -> %d handle %p", devid, st, (void *)*handle);
  return st;
}

void bm_dev_free(bm_handle_t handle) {
  static void (*fn)(bm_handle_t);
  if (!fn) fn = real("bm_dev_free");
  trace("bm_dev_free(%p id %d)", (void *)handle, id_of(handle));
  pthread_mutex_lock(&lock);
  for (int i = 0; i < MAX_HANDLES; i++)
    if (handles[i].h == handle) handles[i].h = NULL;
  pthread_mutex_unlock(&lock);
  fn(handle);
}

int bm_get_devid(bm_handle_t handle) {
  int id = id_of(handle);
  return id < 0 ? 0 : id;
}

static bm_status_t copy(bm_handle_t dst_h, bmapi_mem_t dst, bmapi_mem_t src, unsigned size) {
  static bm_status_t (*d2d)(bm_handle_t, bmapi_mem_t, size_t, bmapi_mem_t, size_t, unsigned);
  if (!d2d) d2d = real("bm_memcpy_d2d_byte");
  return d2d(dst_h, dst, 0, src, 0, size);
}

bm_status_t bm_memcpy_p2p(bm_handle_t src_h, bmapi_mem_t src, bm_handle_t dst_h, bmapi_mem_t dst) {
  unsigned size = src.size < dst.size ? src.size : dst.size;
  bm_status_t st = copy(dst_h, dst, src, size);
  trace("p2p %d:0x%llx -> %d:0x%llx %u B -> %d", id_of(src_h), src.device_addr, id_of(dst_h),
        dst.device_addr, size, st);
  return st;
}

bm_status_t bm_memcpy_c2c(bm_handle_t src_h, bm_handle_t dst_h, bmapi_mem_t src, bmapi_mem_t dst,
                          bool force_dst_cdma) {
  (void)force_dst_cdma;
  unsigned size = src.size < dst.size ? src.size : dst.size;
  bm_status_t st = copy(dst_h, dst, src, size);
  trace("c2c %d:0x%llx -> %d:0x%llx %u B -> %d", id_of(src_h), src.device_addr, id_of(dst_h),
        dst.device_addr, size, st);
  return st;
}
