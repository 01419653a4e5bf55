/*
 * tpuchat_shim.c - an LLM runner over libsophon's runtime (see tpuchat_shim.h).
 *
 * Sections:
 *   1. runtime library      dlopen libbmlib/libbmrt, resolve the calls we use
 *   2. errors and timing    one-line messages, device vs host time
 *   3. model description    nets read from the bmodel, nothing hard-coded
 *   4. state                KV cache, shared position/mask buffers
 *   5. device helpers       checked copies and launches
 *   6. masks                prefill and decode attention masks (bf16/f16)
 *   7. prefill / decode     the two inference steps and greedy selection
 *   8. vision               the vit net, image states and cross-attention layers
 *
 * Two memory layouts exist (net_info.addr_mode):
 *   io_alone (1): every net owns its IO buffers.  The KV cache of layer i IS
 *     block_cache_i's history_k/history_v input buffers; nets are chained by
 *     passing the previous net's output memory as the next input, and new K/V
 *     rows are written by the nets straight into the cache.
 *   basic (0): IO buffers are shared between nets, so nothing may be left in
 *     them across launches: the cache lives in buffers we allocate, and
 *     hidden states / K/V rows are copied, as Sophgo's demos do.
 */
#include "tpuchat_shim.h"
#include "bmrt_api.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

#define MAX_DEVICES 8
#define ERR_LEN 512

_Static_assert(sizeof(bmapi_shape_t) == 36, "bm_shape_t layout");
_Static_assert(sizeof(bmapi_mem_t) == 24, "bm_device_mem_t layout");
_Static_assert(sizeof(bmapi_tensor_t) == 72, "bm_tensor_t layout");
_Static_assert(offsetof(bmapi_tensor_t, device_mem) == 40, "bm_tensor_t layout");
_Static_assert(offsetof(bmapi_tensor_t, st_mode) == 64, "bm_tensor_t layout");
_Static_assert(offsetof(bmapi_net_info_t, stages) == 80, "bm_net_info_t layout");
_Static_assert(offsetof(bmapi_net_info_t, input_loc_devices) == 120, "bm_net_info_t layout");
_Static_assert(offsetof(bmapi_net_info_t, addr_mode) == 140, "bm_net_info_t layout");
_Static_assert(sizeof(bmapi_net_info_t) == 144, "bm_net_info_t layout");

/* ------------------------------------------------------------------ */
/* 1. runtime library                                                   */
/* ------------------------------------------------------------------ */

static struct {
  int loaded;
  int new_net_info; /* libsophon >= 0.5.1: bm_net_info_t has the tail fields */
  char dir[1024];
  bm_dev_getcount_fn dev_getcount;
  bm_dev_request_fn dev_request;
  bm_dev_free_fn dev_free;
  bm_get_stat_fn get_stat;
  bm_thread_sync_fn thread_sync;
  bm_malloc_device_byte_fn malloc_device_byte;
  bm_free_device_fn free_device;
  bm_memcpy_s2d_partial_offset_fn s2d;
  bm_memcpy_d2s_partial_offset_fn d2s;
  bm_memcpy_d2d_byte_fn d2d;
  bm_memset_device_fn memset_device;
  bmrt_create_fn create;
  bmrt_create_ex_fn create_ex; /* NULL on old libsophon */
  bmrt_destroy_fn destroy;
  bmrt_load_bmodel_fn load_bmodel;
  bmrt_get_network_number_fn get_network_number;
  bmrt_get_network_names_fn get_network_names;
  bmrt_get_network_info_fn get_network_info;
  bmrt_launch_tensor_ex_fn launch_tensor_ex;
  /* optional: weight sharing (NULL on old libsophon) */
  bmrt_get_bmodel_info_fn get_bmodel_info;
  bmrt_load_bmodel_with_mem_fn load_bmodel_with_mem;
  bmrt_get_coeff_info_fn get_coeff_info; /* to check where the weights went */
  bm_malloc_device_byte_u64_fn malloc_device_u64;
  bm_free_device_u64_fn free_device_u64;
} RT;

static void set_err(char *err, int errlen, const char *fmt, ...) {
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

static int check_devid(int devid, char *err, int errlen) {
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

static void fill_stat(bm_handle_t h, int devid, tpc_device_stat *out) {
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

/* ------------------------------------------------------------------ */
/* 2. errors and timing                                                 */
/* ------------------------------------------------------------------ */

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* ------------------------------------------------------------------ */
/* 3. model description                                                 */
/* ------------------------------------------------------------------ */

typedef const bmapi_net_info_t *net_t;

struct tpc_model {
  char err[ERR_LEN];
  bm_handle_t handles[MAX_DEVICES];
  int devids[MAX_DEVICES];
  int num_handles;
  int borrowed_handles;   /* handles belong to a family: do not free them */
  int shared_neuron;      /* loaded into caller memory: all nets share one activation
                           * area, so nothing may stay in a net's buffers between launches */
  void *rt;

  const char **net_names; /* from the runtime; we free the array */
  int num_nets;
  tpc_desc d;
  int cache_stage;        /* block_cache stage with the longest KV history */
  net_t *block_kv;        /* [num_layers] when the bmodel has them */
  int block_kv_len;       /* longest chunk a block_kv net takes */
  double cost_decode_us, cost_prefill_us[8];

  net_t embedding, embedding_cache, lm_head, greedy_head;
  net_t *block, *block_cache; /* [num_layers] */

  /* 4. state */
  int direct_io;          /* io_alone: chain and write KV by reference */
  bmapi_mem_t *kv_k, *kv_v; /* KV cache per layer (L rows each) */
  int own_kv;             /* we allocated kv_k/kv_v */
  size_t kv_row_bytes;    /* bytes of one token's K (or V) in one layer */
  size_t hidden_bytes;    /* bytes of one token's hidden state */
  int esize;              /* bytes of one float element (2) */
  int position;           /* tokens in the KV cache */
  int mask_zeros;         /* decode mask entries [0, mask_zeros) are 0; -1 unknown */
  int token_on_device;    /* the last chosen token already sits in embedding_cache's input */
  int last_token;
  unsigned short *mask_buf; /* host scratch for masks */
  size_t mask_buf_elems;
  int32_t *ids_buf;       /* host scratch for ids / positions */
  int ids_cap;            /* its length: the longest prefill or embedding input */
  int32_t *tokens;        /* the ids in the KV cache, by position (kv_len) */
  tpc_sampling sampling;
  unsigned long long rng; /* splitmix64 state */
  net_t sample_head;      /* sample_head or penalty_sample_head */
  float *probs;           /* host scratch for sampling (vocab) */
  int *order;
  float *logits;          /* host copy of the last logits (lm_head kind 2) */
  void *logits_raw;
  tpc_timing timing;
  double call_start, device_us;

  /* A pinned shared prefix (tpc_pin_prefix): a device copy of its KV rows,
   * layer i's K at [2i * n rows], V at [(2i + 1) * n rows]. */
  bmapi_mem_t prefix_mem;
  int prefix_len;
  int32_t *prefix_tokens;

  /* 10. multi-device (num_device > 1): per-net layout plans, KV shares */
  int md;
  tpc_net_plan *plans;          /* [num_nets], in net_names order */
  const tpc_net_plan *p_emb, *p_embc, *p_lm;
  const tpc_net_plan **p_block, **p_cache; /* [num_layers] */
  bmapi_mem_t *md_kv_k, *md_kv_v;          /* [layer * num_device + device] */
  int md_own_kv;
  unsigned char *md_host;       /* host bounce buffer for cross-device copies */
  size_t md_host_bytes;
  /* 8. vision (all zero for text-only bmodels) */
  net_t vit;
  int *is_cross;            /* [num_layers]: 1 for cross-attention layers */
  tpc_vision_desc vd;
  size_t xkv_bytes;         /* bytes of one cross layer's image K (or V) */
  size_t img_states_bytes;
  bmapi_mem_t img_states;   /* our copy of the vit output */
  bmapi_mem_t xhidden_in, xhidden_out; /* hidden rows around a prefill cross layer */
  bmapi_mem_t xmask_prefill, row_mask, xmask_decode;
  int xrows;                /* rows of the cross prefill nets */
  unsigned short *xbuf;     /* host scratch for cross masks */
  void *pix_buf;            /* host scratch when the vit takes half floats */
  int *img_tiles;           /* used tiles of the held image */
  int img_loaded, img_gen;
  int want_img_pos;         /* image token of the next prefill (-1 text only) */
  int seq_img_pos, seq_img_gen; /* what the cached rows were computed with */
};

static int md_prepare(tpc_model *m);
static int md_prefill(tpc_model *m, const int *ids, int n, int need_head, int *next_token);
static int md_decode(tpc_model *m, int token, int need_head, int *next_token);
static int md_reset(tpc_model *m);
static void md_free(tpc_model *m);
static int file_device_num(const char *path, int *out, char *err, int errlen);

const char *tpc_error(const tpc_model *m) { return m ? m->err : "no model"; }

static int fail(tpc_model *m, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m->err, sizeof m->err, fmt, ap);
  va_end(ap);
  return code;
}

static net_t find_net(tpc_model *m, const char *name) {
  for (int i = 0; i < m->num_nets; i++)
    if (strcmp(m->net_names[i], name) == 0) return RT.get_network_info(m->rt, name);
  return NULL;
}

static int is_float_dtype(int dt) { return dt == BMAPI_F16 || dt == BMAPI_BF16 || dt == BMAPI_F32; }
static int dtype_size(int dt) {
  switch (dt) {
    case BMAPI_F32: case BMAPI_INT32: case BMAPI_UINT32: return 4;
    case BMAPI_F16: case BMAPI_BF16: case BMAPI_INT16: case BMAPI_UINT16: return 2;
    default: return 1;
  }
}

static size_t shape_count(const bmapi_shape_t *s, int from) {
  size_t n = 1;
  for (int i = from; i < s->num_dims; i++) n *= (size_t)s->dims[i];
  return n;
}

/* Inputs of a multi-device net are the per-device list repeated; this is
 * the count for one device. */
static int per_device(net_t n, int count, int num_device) {
  return num_device > 1 ? count / num_device : count;
}

static int describe_vision(tpc_model *m);

static int describe_nets(tpc_model *m) {
  tpc_desc *d = &m->d;
  m->embedding = find_net(m, "embedding");
  m->embedding_cache = find_net(m, "embedding_cache");
  m->lm_head = find_net(m, "lm_head");
  m->greedy_head = find_net(m, "greedy_head");
  d->has_embedding_cache = m->embedding_cache != NULL;
  d->has_greedy_head = m->greedy_head != NULL;
  d->has_sample_head = find_net(m, "sample_head") != NULL;
  d->has_penalty_sample_head = find_net(m, "penalty_sample_head") != NULL;
  m->sample_head = d->has_sample_head ? find_net(m, "sample_head") : find_net(m, "penalty_sample_head");
  d->has_block_kv = find_net(m, "block_kv_0") != NULL;

  /* LLM-TPU's older share-cache demos compiled extra nets for the
   * unshared part; their KV layout is not documented by the nets alone and
   * no compiler we can run makes one, so refuse them plainly. */
  if (find_net(m, "block_unshare_0") || find_net(m, "embedding_unshare"))
    return fail(m, TPC_E_MODEL,
                "this bmodel uses the older share-cache layout (embedding_unshare / block_unshare_N), which "
                "tpuchat does not run; compile it with llm_convert --use_history_kv and use --prefix-file");

  char name[64];
  int layers = 0;
  for (;; layers++) {
    snprintf(name, sizeof name, "block_%d", layers);
    if (!find_net(m, name)) break;
  }
  d->num_layers = layers;
  if (!m->embedding || !m->lm_head || layers == 0 || !find_net(m, "block_cache_0") ||
      !m->embedding_cache) {
    char list[300] = "";
    for (int i = 0; i < m->num_nets && strlen(list) < 250; i++) {
      strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
      strncat(list, m->net_names[i], sizeof list - strlen(list) - 1);
    }
    return fail(m, TPC_E_MODEL,
                "not an LLM bmodel: it needs nets embedding, embedding_cache, block_0, "
                "block_cache_0 and lm_head, but has: %s%s", list,
                m->num_nets > 12 ? ", ..." : "");
  }
  m->block = calloc((size_t)layers, sizeof(net_t));
  m->block_cache = calloc((size_t)layers, sizeof(net_t));
  if (!m->block || !m->block_cache) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < layers; i++) {
    snprintf(name, sizeof name, "block_%d", i);
    m->block[i] = find_net(m, name);
    snprintf(name, sizeof name, "block_cache_%d", i);
    m->block_cache[i] = find_net(m, name);
    if (!m->block_cache[i])
      return fail(m, TPC_E_MODEL, "bmodel has block_%d but no block_cache_%d", i, i);
  }
  if (d->has_block_kv) {
    m->block_kv = calloc((size_t)layers, sizeof(net_t));
    if (!m->block_kv) return fail(m, TPC_E_NOMEM, "out of host memory");
    for (int i = 0; i < layers; i++) {
      snprintf(name, sizeof name, "block_kv_%d", i);
      if (!(m->block_kv[i] = find_net(m, name)) || m->block_kv[i]->input_num < 4) {
        d->has_block_kv = 0; /* incomplete: fall back to decode appends */
        break;
      }
    }
    if (d->has_block_kv) {
      m->block_kv_len = m->block_kv[0]->stages[0].input_shapes[0].dims[1];
      if (m->block_kv_len > m->embedding->stages[0].input_shapes[0].dims[1] && !m->embedding->is_dynamic)
        m->block_kv_len = m->embedding->stages[0].input_shapes[0].dims[1];
    }
  }

  net_t b0 = m->block[0], c0 = m->block_cache[0];
  d->num_device = 1;
  if (RT.new_net_info && b0->input_loc_devices) {
    for (int i = 0; i < b0->input_num; i++)
      if (b0->input_loc_devices[i] + 1 > d->num_device) d->num_device = b0->input_loc_devices[i] + 1;
  }
  int b0_in = per_device(b0, b0->input_num, d->num_device);
  int c0_in = per_device(c0, c0->input_num, d->num_device);
  if (b0_in < 2 || c0_in < 5)
    return fail(m, TPC_E_MODEL,
                "unexpected block layout: block_0 has %d inputs (want hidden, position_ids[, mask]), "
                "block_cache_0 has %d (want hidden, position_ids, mask, history_k, history_v)",
                b0_in, c0_in);

  d->is_dynamic = b0->is_dynamic ? 1 : 0;
  d->prefill_has_mask = b0_in >= 3;
  d->num_stages = b0->stage_num > 8 ? 8 : b0->stage_num;
  d->seq_len = 0;
  for (int s = 0; s < d->num_stages; s++) {
    d->stage_seq_len[s] = b0->stages[s].input_shapes[0].dims[1];
    if (d->stage_seq_len[s] > d->seq_len) d->seq_len = d->stage_seq_len[s];
  }
  /* Decode nets may come in several stages (shorter KV histories, e.g. with
   * --use_history_kv); the cache is sized for the longest one. */
  m->cache_stage = 0;
  for (int s = 1; s < c0->stage_num; s++)
    if (c0->stages[s].input_shapes[3].dims[1] > c0->stages[m->cache_stage].input_shapes[3].dims[1])
      m->cache_stage = s;
  const bmapi_shape_t *hk = &c0->stages[m->cache_stage].input_shapes[3];
  const bmapi_shape_t *hid = &b0->stages[0].input_shapes[0];
  d->hidden_size = hid->dims[hid->num_dims - 1];
  d->kv_len = hk->dims[1];
  d->kv_heads = hk->num_dims >= 4 ? hk->dims[2] : 1;
  d->head_dim = hk->dims[hk->num_dims - 1];
  d->float_dtype = b0->input_dtypes[0];
  d->mask_dtype = c0->input_dtypes[2];
  d->addr_mode = RT.new_net_info ? c0->addr_mode : 0;
  d->new_net_info = RT.new_net_info;
  if (d->float_dtype != BMAPI_BF16 && d->float_dtype != BMAPI_F16)
    return fail(m, TPC_E_MODEL, "hidden states are dtype %d; only bf16 and f16 builds are supported",
                d->float_dtype);
  if (d->mask_dtype != BMAPI_BF16 && d->mask_dtype != BMAPI_F16)
    return fail(m, TPC_E_MODEL, "attention mask is dtype %d; expected bf16 or f16", d->mask_dtype);
  const bmapi_shape_t *cmask = &c0->stages[m->cache_stage].input_shapes[2];
  if (cmask->dims[cmask->num_dims - 1] != d->kv_len + 1)
    return fail(m, TPC_E_MODEL, "decode mask has %d columns, expected kv_len + 1 = %d",
                cmask->dims[cmask->num_dims - 1], d->kv_len + 1);
  if (d->seq_len < 1 || d->seq_len > d->kv_len)
    return fail(m, TPC_E_MODEL, "prefill length %d does not fit the KV length %d", d->seq_len, d->kv_len);

  int out_dt = m->lm_head->output_dtypes[0];
  const bmapi_shape_t *lo = &m->lm_head->stages[0].output_shapes[0];
  if (out_dt == BMAPI_INT32) {
    d->lm_head_kind = 1;
  } else if (is_float_dtype(out_dt)) {
    d->lm_head_kind = 2;
    d->logits_dtype = out_dt;
    d->vocab_size = lo->dims[lo->num_dims - 1];
  } else {
    return fail(m, TPC_E_MODEL, "lm_head output dtype %d is neither a token id nor logits", out_dt);
  }
  d->num_nets = m->num_nets;
  d->kv_cache_bytes = (long long)layers * 2 * (long long)d->kv_len *
                      (long long)shape_count(hk, 2) * dtype_size(c0->input_dtypes[3]);
  m->kv_row_bytes = shape_count(hk, 2) * (size_t)dtype_size(c0->input_dtypes[3]);
  m->esize = dtype_size(d->float_dtype);
  m->hidden_bytes = (size_t)d->hidden_size * (size_t)m->esize;
  return describe_vision(m);
}

/* ------------------------------------------------------------------ */
/* 5. device helpers                                                    */
/* ------------------------------------------------------------------ */

static bm_handle_t H(tpc_model *m) { return m->handles[0]; }

/* A view of part of a device buffer. */
static bmapi_mem_t mem_at(bmapi_mem_t base, size_t offset, size_t size) {
  bmapi_mem_t v = base;
  v.device_addr += offset;
  v.size = (unsigned int)size;
  return v;
}

#define TIMED(expr)                      \
  ({                                     \
    double t0_ = now_us();               \
    __typeof__(expr) r_ = (expr);        \
    m->device_us += now_us() - t0_;      \
    r_;                                  \
  })

/* The KV cache of one layer from row `row` to its end. */
static bmapi_mem_t kv_view(tpc_model *m, bmapi_mem_t cache, int row) {
  return mem_at(cache, (size_t)row * m->kv_row_bytes, (size_t)(m->d.kv_len - row) * m->kv_row_bytes);
}

static int upload(tpc_model *m, bmapi_mem_t dst, size_t offset, const void *src, size_t size,
                  const char *what) {
  m->timing.copies++;
  bm_status_t st = TIMED(RT.s2d(H(m), dst, (void *)src, (unsigned int)size, (unsigned int)offset));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "copy of %s to the device failed (status %d)", what, st);
  return TPC_OK;
}

static int download(tpc_model *m, void *dst, bmapi_mem_t src, size_t offset, size_t size,
                    const char *what) {
  m->timing.copies++;
  bm_status_t st = TIMED(RT.d2s(H(m), dst, src, (unsigned int)size, (unsigned int)offset));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "copy of %s from the device failed (status %d)", what, st);
  return TPC_OK;
}

static int copy_d2d(tpc_model *m, bmapi_mem_t dst, size_t dst_off, bmapi_mem_t src, size_t src_off,
                    size_t size, const char *what) {
  m->timing.copies++;
  bm_status_t st = TIMED(RT.d2d(H(m), dst, dst_off, src, src_off, size));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "device copy of %s failed (status %d)", what, st);
  return TPC_OK;
}

static int zero(tpc_model *m, bmapi_mem_t mem, const char *what) {
  bm_status_t st = TIMED(RT.memset_device(H(m), 0, mem));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "clearing %s failed (status %d)", what, st);
  return TPC_OK;
}

static bmapi_tensor_t tensor(bmapi_mem_t mem, int dtype, const bmapi_shape_t *shape) {
  bmapi_tensor_t t;
  memset(&t, 0, sizeof t);
  t.dtype = dtype;
  t.shape = *shape;
  t.device_mem = mem;
  return t;
}

/* Tensors over a stage's own buffers, shapes optionally overridden later. */
static void own_tensors(net_t n, int stage, bmapi_tensor_t *in, bmapi_tensor_t *out) {
  const bmapi_stage_t *s = &n->stages[stage];
  for (int i = 0; i < n->input_num; i++)
    in[i] = tensor(s->input_mems[i], n->input_dtypes[i], &s->input_shapes[i]);
  for (int i = 0; i < n->output_num; i++)
    out[i] = tensor(s->output_mems[i], n->output_dtypes[i], &s->output_shapes[i]);
}

static int launch(tpc_model *m, net_t n, bmapi_tensor_t *in, bmapi_tensor_t *out) {
  m->timing.launches++;
  bool ok = TIMED(RT.launch_tensor_ex(m->rt, n->name, in, n->input_num, out, n->output_num, true, false));
  if (!ok) return fail(m, TPC_E_RUNTIME, "the runtime refused to launch net %s", n->name);
  return TPC_OK;
}

static int sync_device(tpc_model *m) {
  bm_status_t st = TIMED(RT.thread_sync(H(m)));
  if (st != 0) return fail(m, TPC_E_RUNTIME, "device failed while running the model (status %d)", st);
  return TPC_OK;
}

/* Smallest stage of net n whose first input holds len tokens. */
static int pick_stage(net_t n, int len) {
  int best = -1;
  for (int s = 0; s < n->stage_num; s++) {
    int cap = n->stages[s].input_shapes[0].dims[1];
    if (cap >= len && (best < 0 || cap < n->stages[best].input_shapes[0].dims[1])) best = s;
  }
  return best;
}

static void set_len(bmapi_shape_t *s, int len) { s->dims[1] = len; }

/* ------------------------------------------------------------------ */
/* 6. masks                                                             */
/* ------------------------------------------------------------------ */

/* -10000 is the "minus infinity" the converted nets expect. */
static unsigned short mask_min(int dtype) { return dtype == BMAPI_BF16 ? 0xC61C : 0xF0E2; }

static int ensure_mask_buf(tpc_model *m, size_t elems) {
  if (m->mask_buf_elems >= elems) return TPC_OK;
  unsigned short *p = realloc(m->mask_buf, elems * sizeof *p);
  if (!p) return fail(m, TPC_E_NOMEM, "out of host memory for a %zu-entry mask", elems);
  m->mask_buf = p;
  m->mask_buf_elems = elems;
  return TPC_OK;
}

/* Causal prefill mask rows x cols: row i (< n) sees columns j <= i. */
static void build_prefill_mask(unsigned short *buf, int rows, int cols, int n, unsigned short neg) {
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) buf[(size_t)i * cols + j] = (i < n && j <= i) ? 0 : neg;
}

/* ------------------------------------------------------------------ */
/* 7. prefill / decode                                                  */
/* ------------------------------------------------------------------ */

static float half_to_float(unsigned short h, int dtype) {
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

/* --- sampling ------------------------------------------------------- */

static uint64_t rng_next(tpc_model *m) { /* splitmix64 */
  uint64_t z = (m->rng += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static double rng_uniform(tpc_model *m) { return (double)(rng_next(m) >> 11) * (1.0 / 9007199254740992.0); }

static int sampling_active(const tpc_model *m) {
  return m->sampling.sample && m->sampling.temperature > 1e-5f;
}

/* The recent tokens the repetition penalty looks at: [from, end). */
static int penalty_from(const tpc_model *m, int end, int cap) {
  int w = m->sampling.penalty_window > 0 ? m->sampling.penalty_window : end;
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
static int host_sample(tpc_model *m, float *logits, int end) {
  int v = m->d.vocab_size;
  const tpc_sampling *sp = &m->sampling;
  if (sp->repetition_penalty != 1.0f) {
    for (int i = penalty_from(m, end, 0); i < end; i++) {
      int t = m->tokens[i];
      if (t < 0 || t >= v || m->order[t] == -2) continue;
      logits[t] = logits[t] < 0 ? logits[t] * sp->repetition_penalty : logits[t] / sp->repetition_penalty;
      m->order[t] = -2; /* mark: once per distinct token */
    }
    for (int i = penalty_from(m, end, 0); i < end; i++)
      if (m->tokens[i] >= 0 && m->tokens[i] < v) m->order[m->tokens[i]] = 0;
  }
  float best = logits[0];
  for (int i = 1; i < v; i++) if (logits[i] > best) best = logits[i];
  float floor_ = best - 20.0f * sp->temperature;
  int n = 0;
  for (int i = 0; i < v; i++) if (logits[i] >= floor_) m->order[n++] = i;
  sort_keys = logits;
  qsort(m->order, (size_t)n, sizeof(int), by_logit_desc);
  if (sp->top_k > 0 && sp->top_k < n) n = sp->top_k;
  double sum = 0;
  for (int i = 0; i < n; i++) {
    m->probs[i] = expf((logits[m->order[i]] - best) / sp->temperature);
    sum += m->probs[i];
  }
  if (sp->top_p < 1.0f) {
    double acc = 0;
    int keep = n;
    for (int i = 0; i < n; i++) {
      acc += m->probs[i] / sum;
      if (acc >= sp->top_p) { keep = i + 1; break; }
    }
    n = keep;
  }
  int tok = draw(m, m->probs, m->order, n);
  for (int i = 0; i < v; i++) m->order[i] = 0;
  return tok;
}

/* Device sampling through sample_head: the penalty window and the four
 * scalars go up, 50 (prob, id) pairs come down, the host draws one. */
static int device_sample(tpc_model *m, bmapi_mem_t logits_mem, int end, int *tok) {
  net_t sh = m->sample_head;
  bmapi_tensor_t in[8], out[4];
  own_tensors(sh, 0, in, out);
  int cap = in[1].shape.dims[1];
  int from = penalty_from(m, end, cap), w = end - from, rc;
  in[0].device_mem = logits_mem;
  set_len(&in[1].shape, w);
  if ((rc = upload(m, in[1].device_mem, 0, m->tokens + from, sizeof(int32_t) * (size_t)w, "penalty window")))
    return rc;
  float pen = m->sampling.repetition_penalty, temp = m->sampling.temperature, top_p = m->sampling.top_p;
  int32_t top_k = m->sampling.top_k > 0 && m->sampling.top_k < 50 ? m->sampling.top_k : 50;
  if ((rc = upload(m, in[2].device_mem, 0, &pen, 4, "penalty")) ||
      (rc = upload(m, in[3].device_mem, 0, &temp, 4, "temperature")) ||
      (rc = upload(m, in[4].device_mem, 0, &top_k, 4, "top_k")) ||
      (rc = upload(m, in[5].device_mem, 0, &top_p, 4, "top_p")))
    return rc;
  /* top_k is a shape input: the outputs hold top_k candidates. */
  if ((rc = launch(m, sh, in, out))) return rc;
  if ((rc = sync_device(m))) return rc;
  int k = out[0].shape.num_dims == 2 && out[0].shape.dims[1] > 0 ? out[0].shape.dims[1] : top_k;
  if (k > 50) k = 50;
  float p[50];
  int ids[50];
  if ((rc = download(m, p, out[0].device_mem, 0, sizeof(float) * (size_t)k, "sample probabilities")) ||
      (rc = download(m, ids, out[1].device_mem, 0, sizeof(int) * (size_t)k, "sample ids")))
    return rc;
  *tok = draw(m, p, ids, k);
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
  m->sampling = *sp;
  m->rng = sp->seed;
  return TPC_OK;
}

/* Run lm_head and choose the next token (greedy on the device when the
 * bmodel can, else sampled or argmax'd); `end` is the number of tokens in
 * the cache including the one just fed (the penalty window's end). */
static int run_head(tpc_model *m, bmapi_mem_t hidden_row, int end, int *tok) {
  net_t lm = m->lm_head;
  bmapi_tensor_t in[4], out[4];
  own_tensors(lm, 0, in, out);
  if (m->direct_io) {
    in[0].device_mem = hidden_row;
  } else {
    int rc = copy_d2d(m, in[0].device_mem, 0, hidden_row, 0, m->hidden_bytes, "hidden state to lm_head");
    if (rc) return rc;
  }
  int sample = sampling_active(m);
  /* Let a device-side token land where embedding_cache reads it, so the
   * next decode needs no upload. */
  int token_to_embedding = m->direct_io && m->d.lm_head_kind == 1;
  if (token_to_embedding) out[0].device_mem = m->embedding_cache->stages[0].input_mems[0];
  int rc = launch(m, lm, in, out);
  if (rc) return rc;

  if (sample && m->sample_head && !m->sampling.on_host) {
    token_to_embedding = 0;
    if ((rc = device_sample(m, out[0].device_mem, end, tok))) return rc;
  } else if (m->d.lm_head_kind == 1 || (!sample && m->greedy_head)) {
    bmapi_mem_t token_mem = out[0].device_mem;
    if (m->d.lm_head_kind == 2) {
      net_t g = m->greedy_head;
      bmapi_tensor_t gin[4], gout[4];
      own_tensors(g, 0, gin, gout);
      gin[0].device_mem = out[0].device_mem;
      if (m->direct_io) gout[0].device_mem = m->embedding_cache->stages[0].input_mems[0];
      if ((rc = launch(m, g, gin, gout))) return rc;
      token_mem = gout[0].device_mem;
      token_to_embedding = m->direct_io;
    }
    if ((rc = sync_device(m))) return rc;
    int32_t t = 0;
    if ((rc = download(m, &t, token_mem, 0, 4, "the next token"))) return rc;
    *tok = t;
  } else {
    if ((rc = sync_device(m))) return rc;
    int v = m->d.vocab_size, es = dtype_size(m->d.logits_dtype);
    if ((rc = download(m, m->logits_raw, out[0].device_mem, 0, (size_t)v * es, "logits"))) return rc;
    int best = 0;
    for (int i = 0; i < v; i++) {
      m->logits[i] = es == 4 ? ((float *)m->logits_raw)[i]
                             : half_to_float(((unsigned short *)m->logits_raw)[i], m->d.logits_dtype);
      if (m->logits[i] > m->logits[best]) best = i;
    }
    *tok = sample ? host_sample(m, m->logits, end) : best;
  }
  m->last_token = *tok;
  m->token_on_device = token_to_embedding;
  return TPC_OK;
}

static void begin_call(tpc_model *m) {
  memset(&m->timing, 0, sizeof m->timing);
  m->device_us = 0;
  m->call_start = now_us();
}

static void end_call(tpc_model *m) {
  m->timing.total_us = now_us() - m->call_start;
  m->timing.device_us = m->device_us;
  m->timing.host_us = m->timing.total_us - m->device_us;
}

static int upload_cross_masks(tpc_model *m, int n, int rows);
static int cross_prefill_layer(tpc_model *m, int layer, int rows, bmapi_mem_t *hidden);
static int cross_decode_layer(tpc_model *m, int layer, bmapi_mem_t *hidden);
static int image_checks(tpc_model *m, int n, int *lcp, int pinned);

static int prefill_impl(tpc_model *m, const int *ids, int n, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  if (!ids || n < 1) return fail(m, TPC_E_ARG, "prefill needs at least one token");
  if (n > d->seq_len)
    return fail(m, TPC_E_ARG, "prompt of %d tokens is longer than this bmodel's prefill length %d",
                n, d->seq_len);
  if (m->md) return md_prefill(m, ids, n, need_head, next_token);
  net_t b0 = m->block[0];
  int stage = d->is_dynamic ? 0 : pick_stage(b0, n);
  if (stage < 0) return fail(m, TPC_E_ARG, "no prefill stage holds %d tokens", n);
  int rows = d->is_dynamic ? n : b0->stages[stage].input_shapes[0].dims[1];
  int rc;

  /* Token ids and positions, padding zeroed: padded rows still run
   * through the nets and must stay finite. */
  memset(m->ids_buf, 0, sizeof(int32_t) * (size_t)m->ids_cap);
  memcpy(m->ids_buf, ids, sizeof(int32_t) * (size_t)n);
  net_t emb = m->embedding;
  int estage = emb->is_dynamic ? 0 : pick_stage(emb, rows);
  if (estage < 0) return fail(m, TPC_E_MODEL, "embedding has no stage for %d tokens", rows);
  bmapi_tensor_t ein[2], eout[2];
  own_tensors(emb, estage, ein, eout);
  /* A static embedding reads all its rows, even when the blocks are
   * dynamic: upload the padding too, or it gathers stale ids. */
  int emb_rows = emb->is_dynamic ? rows : ein[0].shape.dims[1];
  if (emb->is_dynamic) set_len(&ein[0].shape, rows);
  if (emb_rows > m->ids_cap) return fail(m, TPC_E_MODEL, "embedding input longer than expected");
  if ((rc = upload(m, ein[0].device_mem, 0, m->ids_buf, sizeof(int32_t) * (size_t)emb_rows, "token ids")))
    return rc;
  if ((rc = launch(m, emb, ein, eout))) return rc;

  bmapi_tensor_t in[8], out[8];
  own_tensors(b0, stage, in, out);
  bmapi_mem_t pos_mem = in[1].device_mem, mask_mem = d->prefill_has_mask ? in[2].device_mem : pos_mem;
  for (int i = 0; i < n; i++) m->ids_buf[i] = i;
  memset(m->ids_buf + n, 0, sizeof(int32_t) * (size_t)(m->ids_cap - n));
  int mask_rows = 0, mask_cols = 0;
  if (d->prefill_has_mask) {
    const bmapi_shape_t *ms = &b0->stages[stage].input_shapes[2];
    mask_rows = d->is_dynamic ? n : ms->dims[ms->num_dims - 2];
    mask_cols = d->is_dynamic ? n : ms->dims[ms->num_dims - 1];
    if ((rc = ensure_mask_buf(m, (size_t)mask_rows * mask_cols))) return rc;
    build_prefill_mask(m->mask_buf, mask_rows, mask_cols, n, mask_min(b0->input_dtypes[2]));
  }

  bmapi_mem_t hidden = eout[0].device_mem;
  int image = m->seq_img_pos >= 0, reupload = 0;
  if (image && (rc = upload_cross_masks(m, n, rows))) return rc;
  for (int i = 0; i < d->num_layers; i++) {
    net_t b = m->block[i];
    if (m->is_cross && m->is_cross[i]) {
      if (!image) continue; /* text only: transformers skips these layers */
      if ((rc = cross_prefill_layer(m, i, rows, &hidden))) return rc;
      reupload = 1; /* the cross net may have overwritten the shared IO we reuse */
      continue;
    }
    own_tensors(b, stage, in, out);
    if (d->is_dynamic) {
      set_len(&in[0].shape, n);
      set_len(&in[1].shape, n);
      if (d->prefill_has_mask) { in[2].shape.dims[in[2].shape.num_dims - 2] = n; in[2].shape.dims[in[2].shape.num_dims - 1] = n; }
    }
    if (m->direct_io) {
      in[0].device_mem = hidden;
      if (i == 0 || reupload) {
        reupload = 0;
        if ((rc = upload(m, pos_mem, 0, m->ids_buf, sizeof(int32_t) * (size_t)rows, "position ids"))) return rc;
        if (d->prefill_has_mask &&
            (rc = upload(m, mask_mem, 0, m->mask_buf, (size_t)mask_rows * mask_cols * 2, "prefill mask")))
          return rc;
      }
      in[1].device_mem = pos_mem;
      if (d->prefill_has_mask) in[2].device_mem = mask_mem;
      /* K/V rows go straight into the cache. */
      /* K/V rows go straight into the cache (a view as large as the net's
       * biggest output: dynamic nets are checked against it). */
      out[1].device_mem = kv_view(m, m->kv_k[i], 0);
      out[2].device_mem = kv_view(m, m->kv_v[i], 0);
    } else {
      if (hidden.device_addr != in[0].device_mem.device_addr &&
          (rc = copy_d2d(m, in[0].device_mem, 0, hidden, 0, (size_t)rows * m->hidden_bytes, "hidden state")))
        return rc;
      if ((rc = upload(m, in[1].device_mem, 0, m->ids_buf, sizeof(int32_t) * (size_t)rows, "position ids")))
        return rc;
      if (d->prefill_has_mask &&
          (rc = upload(m, in[2].device_mem, 0, m->mask_buf, (size_t)mask_rows * mask_cols * 2, "prefill mask")))
        return rc;
    }
    if ((rc = launch(m, b, in, out))) return rc;
    if (!m->direct_io) {
      if ((rc = copy_d2d(m, m->kv_k[i], 0, out[1].device_mem, 0, (size_t)n * m->kv_row_bytes, "K cache")) ||
          (rc = copy_d2d(m, m->kv_v[i], 0, out[2].device_mem, 0, (size_t)n * m->kv_row_bytes, "V cache")))
        return rc;
    }
    hidden = out[0].device_mem;
  }
  /* The KV rows beyond n hold padding results now; the decode mask hides
   * them and decode overwrites them one by one. */
  if (m->mask_zeros > n) m->mask_zeros = -1;
  if (!m->direct_io) m->mask_zeros = -1;
  memcpy(m->tokens, ids, sizeof(int32_t) * (size_t)n);
  if (need_head) {
    if ((rc = run_head(m, mem_at(hidden, (size_t)(n - 1) * m->hidden_bytes, m->hidden_bytes), n, next_token)))
      return rc;
  } else {
    m->token_on_device = 0;
    if ((rc = sync_device(m))) return rc;
  }
  m->position = n;
  return TPC_OK;
}

static int decode_impl(tpc_model *m, int token, int need_head, int *next_token);

/* Measured wall time of decode steps and fresh prefills (per stage), for
 * choosing between appending and re-prefilling.  Until measured, assume a
 * prefill costs as much as 8 decode steps (roughly what 7B models show on
 * BM1684X with S = 512; the simulator is nearer 5). */
static double decode_cost(const tpc_model *m) { return m->cost_decode_us > 0 ? m->cost_decode_us : 1.0; }
static double prefill_cost(const tpc_model *m, int n) {
  int st = m->d.is_dynamic ? 0 : pick_stage(m->block[0], n);
  double c = st >= 0 && st < 8 ? m->cost_prefill_us[st] : 0;
  return c > 0 ? c : 8.0 * decode_cost(m);
}
static void note_prefill_cost(tpc_model *m, int n) {
  int st = m->d.is_dynamic ? 0 : pick_stage(m->block[0], n);
  if (st >= 0 && st < 8) m->cost_prefill_us[st] = m->timing.total_us;
}

int tpc_prefill(tpc_model *m, const int *ids, int n, int *next_token) {
  if (!m) return TPC_E_ARG;
  int none = 0, rc0 = ids && n >= 1 ? image_checks(m, n, &none, 0) : TPC_OK;
  if (rc0) return rc0;
  m->seq_img_pos = m->want_img_pos;
  m->seq_img_gen = m->img_gen;
  begin_call(m);
  m->position = 0;
  int rc = prefill_impl(m, ids, n, 1, next_token);
  if (rc) m->position = 0;
  end_call(m);
  if (!rc) note_prefill_cost(m, n);
  return rc;
}

/* Prefill chunk ids[start, start + c) against the cache rows [0, start)
 * with a block_kv net; the chunk's K/V rows land right after them. */
static int block_kv_chunk(tpc_model *m, const int *ids, int start, int c, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  net_t emb = m->embedding;
  bmapi_tensor_t ein[2], eout[2], in[8], out[8];
  int rc, estage = emb->is_dynamic ? 0 : pick_stage(emb, c);
  if (estage < 0) return fail(m, TPC_E_MODEL, "embedding has no stage for %d tokens", c);
  own_tensors(emb, estage, ein, eout);
  int emb_rows = emb->is_dynamic ? c : ein[0].shape.dims[1];
  if (emb->is_dynamic) set_len(&ein[0].shape, c);
  memset(m->ids_buf, 0, sizeof(int32_t) * (size_t)m->ids_cap);
  memcpy(m->ids_buf, ids + start, sizeof(int32_t) * (size_t)c);
  if ((rc = upload(m, ein[0].device_mem, 0, m->ids_buf, sizeof(int32_t) * (size_t)emb_rows, "token ids")) ||
      (rc = launch(m, emb, ein, eout)))
    return rc;
  for (int i = 0; i < c; i++) m->ids_buf[i] = start + i;
  bmapi_mem_t hidden = eout[0].device_mem, pos_mem;
  for (int i = 0; i < d->num_layers; i++) {
    net_t b = m->block_kv[i];
    own_tensors(b, 0, in, out);
    if (i == 0) {
      pos_mem = in[1].device_mem;
      if ((rc = upload(m, pos_mem, 0, m->ids_buf, sizeof(int32_t) * (size_t)c, "position ids"))) return rc;
    }
    if (!m->direct_io) {
      if ((rc = copy_d2d(m, in[0].device_mem, 0, hidden, 0, (size_t)c * m->hidden_bytes, "hidden state")))
        return rc;
      hidden = in[0].device_mem;
      if (i > 0 && (rc = upload(m, in[1].device_mem, 0, m->ids_buf, sizeof(int32_t) * (size_t)c, "position ids")))
        return rc;
      pos_mem = in[1].device_mem;
    }
    in[0].device_mem = hidden;
    set_len(&in[0].shape, c);
    in[1].device_mem = pos_mem;
    set_len(&in[1].shape, c);
    /* The net concatenates history and new K/V "by merge": it expects the
     * history in its own input buffer, so it is copied there, and the new
     * rows are copied back into the cache. */
    size_t hist = (size_t)start * m->kv_row_bytes, rows = (size_t)c * m->kv_row_bytes;
    if ((rc = copy_d2d(m, in[2].device_mem, 0, m->kv_k[i], 0, hist, "K history")) ||
        (rc = copy_d2d(m, in[3].device_mem, 0, m->kv_v[i], 0, hist, "V history")))
      return rc;
    set_len(&in[2].shape, start);
    set_len(&in[3].shape, start);
    if ((rc = launch(m, b, in, out))) return rc;
    if ((rc = copy_d2d(m, m->kv_k[i], hist, out[1].device_mem, 0, rows, "K cache")) ||
        (rc = copy_d2d(m, m->kv_v[i], hist, out[2].device_mem, 0, rows, "V cache")))
      return rc;
    hidden = out[0].device_mem;
  }
  memcpy(m->tokens + start, ids + start, sizeof(int32_t) * (size_t)c);
  m->position = start + c;
  if (need_head)
    return run_head(m, mem_at(hidden, (size_t)(c - 1) * m->hidden_bytes, m->hidden_bytes), start + c, next_token);
  m->token_on_device = 0;
  return sync_device(m);
}

/* Feed ids[from, n) after the cached rows [0, from). */
static int append(tpc_model *m, const int *ids, int from, int n, int *next_token) {
  int rc = TPC_OK;
  m->position = from;
  if (m->d.has_block_kv) {
    int chunk = m->block_kv_len;
    for (int s = from; s < n && !rc; s += chunk) {
      int c = n - s < chunk ? n - s : chunk;
      rc = block_kv_chunk(m, ids, s, c, s + c == n, next_token);
    }
    return rc;
  }
  m->token_on_device = 0;
  for (int i = from; i < n && !rc; i++) rc = decode_impl(m, ids[i], i == n - 1, next_token);
  return rc;
}

static int restore_prefix(tpc_model *m, int rows);

int tpc_prefill_reuse(tpc_model *m, const int *ids, int n, int *next_token) {
  if (!m) return TPC_E_ARG;
  tpc_desc *d = &m->d;
  if (!ids || n < 1) return fail(m, TPC_E_ARG, "prefill needs at least one token");
  if (n > d->kv_len)
    return fail(m, TPC_E_ARG, "prompt of %d tokens is longer than this bmodel's KV length %d", n, d->kv_len);
  int lcp = 0, limit = m->position < n ? m->position : n;
  while (lcp < limit && m->tokens[lcp] == ids[lcp]) lcp++;
  int plcp = 0, plimit = m->prefix_len < n ? m->prefix_len : n;
  while (plcp < plimit && m->prefix_tokens[plcp] == ids[plcp]) plcp++;
  int restore = plcp > lcp; /* the pinned copy holds more of this prompt than the cache */
  /* Pinned rows were computed text-only: they stand for rows before an image token only. */
  if (restore && m->want_img_pos >= 0 && plcp > m->want_img_pos) restore = 0;
  if (restore) lcp = plcp;
  if (lcp == n) lcp = n - 1; /* the last prompt token is fed again for its logits */
  int rc_img = image_checks(m, n, &lcp, restore);
  if (rc_img) return rc_img;
  /* A fresh start prefills up to seq_len tokens and appends the rest.
   * Appending costs one decode step per token (or one block_kv launch per
   * chunk, always cheaper than recomputing); a static prefill costs about
   * the same whatever the length.  Pick the cheaper by measured costs. */
  int fresh_len = n <= d->seq_len ? n : d->seq_len;
  double cost_fresh = prefill_cost(m, fresh_len) + (double)(n - fresh_len) * decode_cost(m);
  int use_append = lcp > 0 && (d->has_block_kv || (double)(n - lcp) * decode_cost(m) < cost_fresh);
  if (m->want_img_pos >= fresh_len && !use_append)
    return fail(m, TPC_E_ARG, "the image token at position %d must lie within the first %d tokens (the prefill length)",
                m->want_img_pos, fresh_len);
  m->seq_img_pos = m->want_img_pos;
  m->seq_img_gen = m->img_gen;
  begin_call(m);
  int rc;
  if (use_append) {
    rc = restore ? restore_prefix(m, lcp) : TPC_OK;
    if (!rc) rc = append(m, ids, lcp, n, next_token);
    m->timing.reused = lcp;
  } else {
    m->position = 0;
    rc = prefill_impl(m, ids, fresh_len, fresh_len == n, next_token);
    if (!rc && fresh_len < n) rc = append(m, ids, fresh_len, n, next_token);
    if (!rc && fresh_len == n) {
      end_call(m);
      note_prefill_cost(m, n);
      return rc;
    }
  }
  if (rc) {
    m->position = 0; /* the cache holds a partial state: forget it */
  }
  end_call(m);
  return rc;
}

/* Bring the decode mask to "entries [0, p) and the last visible", writing
 * only the entries that differ from what the device holds. */
static int update_decode_mask(tpc_model *m, bmapi_mem_t mask_mem, int p) {
  int L = m->d.kv_len, rc;
  unsigned short neg = mask_min(m->d.mask_dtype);
  if (m->mask_zeros < 0) {
    if ((rc = ensure_mask_buf(m, (size_t)L + 1))) return rc;
    for (int j = 0; j <= L; j++) m->mask_buf[j] = (j < p || j == L) ? 0 : neg;
    if ((rc = upload(m, mask_mem, 0, m->mask_buf, (size_t)(L + 1) * 2, "decode mask"))) return rc;
  } else if (m->mask_zeros != p) {
    int lo = m->mask_zeros < p ? m->mask_zeros : p, hi = m->mask_zeros < p ? p : m->mask_zeros;
    unsigned short v = m->mask_zeros < p ? 0 : neg;
    if ((rc = ensure_mask_buf(m, (size_t)(hi - lo)))) return rc;
    for (int j = 0; j < hi - lo; j++) m->mask_buf[j] = v;
    if ((rc = upload(m, mask_mem, (size_t)lo * 2, m->mask_buf, (size_t)(hi - lo) * 2, "decode mask")))
      return rc;
  }
  m->mask_zeros = m->direct_io ? p : -1;
  return TPC_OK;
}

static int decode_impl(tpc_model *m, int token, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  int p = m->position, rc;
  if (p <= 0) return fail(m, TPC_E_ARG, "decode before prefill");
  if (p >= d->kv_len)
    return fail(m, TPC_E_FULL, "the context is full: all %d KV positions are used", d->kv_len);
  if (m->md) return md_decode(m, token, need_head, next_token);

  net_t ec = m->embedding_cache;
  bmapi_tensor_t ein[2], eout[2];
  own_tensors(ec, 0, ein, eout);
  if (!(m->token_on_device && token == m->last_token)) {
    int32_t t = token;
    if ((rc = upload(m, ein[0].device_mem, 0, &t, 4, "token id"))) return rc;
  }
  m->token_on_device = 0;
  if ((rc = launch(m, ec, ein, eout))) return rc;

  bmapi_tensor_t in[8], out[8];
  net_t c0 = m->block_cache[0];
  own_tensors(c0, m->cache_stage, in, out);
  bmapi_mem_t pos_mem = in[1].device_mem, mask_mem = in[2].device_mem;
  int32_t pos = p;
  bmapi_mem_t hidden = eout[0].device_mem;
  for (int i = 0; i < d->num_layers; i++) {
    net_t c = m->block_cache[i];
    if (m->is_cross && m->is_cross[i]) {
      if (m->seq_img_pos < 0) continue; /* text only */
      if ((rc = cross_decode_layer(m, i, &hidden))) return rc;
      continue;
    }
    own_tensors(c, m->cache_stage, in, out);
    in[3].device_mem = m->kv_k[i];
    in[4].device_mem = m->kv_v[i];
    if (m->direct_io) {
      if (i == 0) {
        if ((rc = upload(m, pos_mem, 0, &pos, 4, "position id"))) return rc;
        if ((rc = update_decode_mask(m, mask_mem, p))) return rc;
      }
      in[0].device_mem = hidden;
      in[1].device_mem = pos_mem;
      in[2].device_mem = mask_mem;
      out[1].device_mem = kv_view(m, m->kv_k[i], p);
      out[2].device_mem = kv_view(m, m->kv_v[i], p);
    } else {
      if ((rc = copy_d2d(m, in[0].device_mem, 0, hidden, 0, m->hidden_bytes, "hidden state"))) return rc;
      if ((rc = upload(m, in[1].device_mem, 0, &pos, 4, "position id"))) return rc;
      m->mask_zeros = -1;
      if ((rc = update_decode_mask(m, in[2].device_mem, p))) return rc;
    }
    if ((rc = launch(m, c, in, out))) return rc;
    if (!m->direct_io) {
      if ((rc = copy_d2d(m, m->kv_k[i], (size_t)p * m->kv_row_bytes, out[1].device_mem, 0, m->kv_row_bytes, "K cache")) ||
          (rc = copy_d2d(m, m->kv_v[i], (size_t)p * m->kv_row_bytes, out[2].device_mem, 0, m->kv_row_bytes, "V cache")))
        return rc;
    }
    hidden = out[0].device_mem;
  }
  m->tokens[p] = token;
  if (need_head) {
    if ((rc = run_head(m, mem_at(hidden, 0, m->hidden_bytes), p + 1, next_token))) return rc;
  } else if ((rc = sync_device(m))) {
    return rc;
  }
  m->position = p + 1;
  return TPC_OK;
}

int tpc_decode(tpc_model *m, int token, int *next_token) {
  if (!m) return TPC_E_ARG;
  begin_call(m);
  int rc = decode_impl(m, token, 1, next_token);
  end_call(m);
  if (!rc) m->cost_decode_us = m->cost_decode_us > 0 ? 0.8 * m->cost_decode_us + 0.2 * m->timing.total_us
                                                     : m->timing.total_us;
  return rc;
}

int tpc_reset(tpc_model *m) {
  if (!m) return TPC_E_ARG;
  begin_call(m);
  int rc = TPC_OK;
  /* Masked positions still enter the arithmetic: leftover bits that read as
   * NaN/Inf would poison every answer, so the cache starts zeroed. */
  if (m->md) rc = md_reset(m);
  for (int i = 0; i < m->d.num_layers && !rc && !m->md; i++) {
    rc = zero(m, m->kv_k[i], "the K cache");
    if (!rc) rc = zero(m, m->kv_v[i], "the V cache");
  }
  if (!rc && !m->md) rc = sync_device(m);
  m->position = 0;
  m->mask_zeros = -1;
  m->token_on_device = 0;
  end_call(m);
  return rc;
}

int tpc_position(const tpc_model *m) { return m ? m->position : 0; }

int tpc_rewind(tpc_model *m, int position) {
  if (!m || position < 0) return TPC_E_ARG;
  if (position < m->position) m->position = position;
  return TPC_OK;
}

int tpc_last_timing(const tpc_model *m, tpc_timing *out) {
  if (!m || !out) return TPC_E_ARG;
  *out = m->timing;
  return TPC_OK;
}

int tpc_last_logits(tpc_model *m, float *out, int n) {
  if (!m || !out) return TPC_E_ARG;
  if (m->d.lm_head_kind != 2 || m->greedy_head)
    return fail(m, TPC_E_ARG, "this bmodel does not return logits to the host");
  if (n < m->d.vocab_size) return fail(m, TPC_E_ARG, "logits buffer too small");
  memcpy(out, m->logits, sizeof(float) * (size_t)m->d.vocab_size);
  return TPC_OK;
}

/* ------------------------------------------------------------------ */
/* shared prefix: KV rows kept aside on the device                      */
/* ------------------------------------------------------------------ */

/* Copy the pinned rows [0, rows) back into the cache: two device copies
 * per layer instead of recomputing them. */
static int restore_prefix(tpc_model *m, int rows) {
  size_t n = (size_t)m->prefix_len * m->kv_row_bytes, size = (size_t)rows * m->kv_row_bytes;
  int rc = TPC_OK;
  for (int i = 0; i < m->d.num_layers && !rc; i++) {
    rc = copy_d2d(m, m->kv_k[i], 0, m->prefix_mem, (size_t)(2 * i) * n, size, "pinned K rows");
    if (!rc) rc = copy_d2d(m, m->kv_v[i], 0, m->prefix_mem, (size_t)(2 * i + 1) * n, size, "pinned V rows");
  }
  if (rc) return rc;
  memcpy(m->tokens, m->prefix_tokens, sizeof(int32_t) * (size_t)rows);
  m->position = rows;
  m->token_on_device = 0;
  return TPC_OK;
}

static void drop_prefix(tpc_model *m) {
  if (m->prefix_mem.size) RT.free_device(H(m), m->prefix_mem);
  memset(&m->prefix_mem, 0, sizeof m->prefix_mem);
  free(m->prefix_tokens);
  m->prefix_tokens = NULL;
  m->prefix_len = 0;
}

int tpc_pin_prefix(tpc_model *m, const int *ids, int n) {
  if (!m || n < 0 || (n > 0 && !ids)) return TPC_E_ARG;
  drop_prefix(m);
  if (n == 0) return TPC_OK;
  if (m->md) return fail(m, TPC_E_ARG, "a shared prefix is not supported on multi-device bmodels yet");
  if (n >= m->d.kv_len)
    return fail(m, TPC_E_ARG, "a shared prefix of %d tokens leaves no room in this bmodel's KV length %d", n,
                m->d.kv_len);
  int32_t *toks = malloc(sizeof(int32_t) * (size_t)n);
  if (!toks) return fail(m, TPC_E_NOMEM, "out of host memory");
  int want = m->want_img_pos, next;
  m->want_img_pos = -1; /* the pinned rows are text: they serve any prompt up to its image token */
  int rc = tpc_prefill_reuse(m, ids, n, &next); /* computes only what is not cached yet */
  m->want_img_pos = want;
  if (rc) {
    free(toks);
    return rc;
  }
  tpc_timing t = m->timing;
  size_t per = (size_t)n * m->kv_row_bytes, bytes = per * 2 * (size_t)m->d.num_layers;
  bmapi_mem_t mem;
  if (bytes > 0xffffffffu || RT.malloc_device_byte(H(m), &mem, (unsigned int)bytes) != 0) {
    free(toks);
    return fail(m, TPC_E_NOMEM, "not enough device memory to keep a %d-token shared prefix (%zu MB)", n,
                bytes >> 20);
  }
  m->prefix_mem = mem;
  begin_call(m);
  for (int i = 0; i < m->d.num_layers && !rc; i++) {
    rc = copy_d2d(m, mem, (size_t)(2 * i) * per, m->kv_k[i], 0, per, "K rows to pin");
    if (!rc) rc = copy_d2d(m, mem, (size_t)(2 * i + 1) * per, m->kv_v[i], 0, per, "V rows to pin");
  }
  if (!rc) rc = sync_device(m);
  end_call(m);
  if (rc) {
    free(toks);
    drop_prefix(m);
    return rc;
  }
  memcpy(toks, ids, sizeof(int32_t) * (size_t)n);
  m->prefix_tokens = toks;
  m->prefix_len = n;
  /* Report the prefill's timing (how long computing the prefix took) plus the copies. */
  t.total_us += m->timing.total_us;
  t.device_us += m->timing.device_us;
  t.host_us += m->timing.host_us;
  t.copies += m->timing.copies;
  m->timing = t;
  return TPC_OK;
}

int tpc_pinned_prefix(const tpc_model *m) { return m ? m->prefix_len : 0; }

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

static unsigned short half_one(int dtype) { return dtype == BMAPI_BF16 ? 0x3F80 : 0x3C00; }

static unsigned short float_to_half(float f, int dtype) {
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

static int is_cross_layer(tpc_model *m, int i) {
  net_t b = m->block[i];
  int nin = per_device(b, b->input_num, m->d.num_device);
  /* Self-attention blocks take int32 position ids second; cross blocks the
   * float image states. */
  return nin >= 4 && is_float_dtype(b->input_dtypes[1]) && b->stages[0].input_shapes[1].num_dims == 3;
}

static int describe_vision(tpc_model *m) {
  tpc_desc *d = &m->d;
  tpc_vision_desc *v = &m->vd;
  int L = d->num_layers, ncross = 0;
  memset(v, 0, sizeof *v);
  m->is_cross = calloc((size_t)L, sizeof(int));
  if (!m->is_cross) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < L; i++) {
    if (!is_cross_layer(m, i)) continue;
    net_t c = m->block_cache[i];
    int cin = per_device(c, c->input_num, d->num_device);
    if (i == 0)
      return fail(m, TPC_E_MODEL, "layer 0 is a cross-attention layer; tpuchat needs a self-attention layer first");
    if (cin != 4 || c->output_num < 1 || m->block[i]->output_num < 3)
      return fail(m, TPC_E_MODEL,
                  "block_%d takes image states but block_cache_%d has %d inputs (want hidden, mask, "
                  "image K, image V)", i, i, cin);
    m->is_cross[i] = 1;
    if (ncross < 64) v->cross_layers[ncross] = i;
    ncross++;
  }
  v->num_cross_layers = ncross;
  if (!ncross) {
    free(m->is_cross);
    m->is_cross = NULL;
    return TPC_OK;
  }
  /* Cross layers cannot be fed by block_kv chunks: append by decode steps. */
  d->has_block_kv = 0;
  int xl = v->cross_layers[0];
  const bmapi_shape_t *xk = &m->block_cache[xl]->stages[0].input_shapes[2];
  const bmapi_shape_t *st = &m->block[xl]->stages[0].input_shapes[1];
  m->xkv_bytes = shape_count(xk, 0) * (size_t)dtype_size(m->block_cache[xl]->input_dtypes[2]);
  v->image_kv_bytes = (long long)ncross * 2 * (long long)m->xkv_bytes;
  d->kv_cache_bytes = (long long)(L - ncross) * 2 * (long long)d->kv_len * (long long)m->kv_row_bytes +
                      v->image_kv_bytes;
  m->vit = find_net(m, "vit");
  if (!m->vit) return TPC_OK; /* cross layers without a vision tower: text only */
  net_t vit = m->vit;
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
  if (vit->output_dtypes[0] != m->block[xl]->input_dtypes[1])
    return fail(m, TPC_E_MODEL, "vit output dtype %d differs from block_%d's image states dtype %d",
                vit->output_dtypes[0], xl, m->block[xl]->input_dtypes[1]);
  if (v->pixel_dtype != BMAPI_F32 && v->pixel_dtype != BMAPI_BF16 && v->pixel_dtype != BMAPI_F16)
    return fail(m, TPC_E_MODEL, "vit pixel_values dtype %d is not a float type", v->pixel_dtype);
  if (xk->dims[xk->num_dims - 2] != v->tiles * v->patches)
    return fail(m, TPC_E_MODEL, "block_cache_%d's image K has %d rows, expected tiles x patches = %d", xl,
                xk->dims[xk->num_dims - 2], v->tiles * v->patches);
  m->img_states_bytes = shape_count(vo, 0) * (size_t)dtype_size(vit->output_dtypes[0]);
  m->xrows = m->block[xl]->stages[0].input_shapes[0].dims[1];
  v->has_vision = 1;
  return TPC_OK;
}

static int alloc_cross_kv(tpc_model *m, int layer) {
  if (m->direct_io) {
    m->kv_k[layer] = m->block_cache[layer]->stages[0].input_mems[2];
    m->kv_v[layer] = m->block_cache[layer]->stages[0].input_mems[3];
    return TPC_OK;
  }
  m->own_kv = 1;
  if (RT.malloc_device_byte(H(m), &m->kv_k[layer], (unsigned int)m->xkv_bytes) != 0 ||
      RT.malloc_device_byte(H(m), &m->kv_v[layer], (unsigned int)m->xkv_bytes) != 0)
    return fail(m, TPC_E_NOMEM, "not enough device memory for the image K/V of layer %d", layer);
  return TPC_OK;
}

static int dev_alloc(tpc_model *m, bmapi_mem_t *mem, size_t bytes, const char *what) {
  if (RT.malloc_device_byte(H(m), mem, (unsigned int)bytes) != 0) {
    memset(mem, 0, sizeof *mem);
    return fail(m, TPC_E_NOMEM, "not enough device memory for %s (%zu bytes)", what, bytes);
  }
  return TPC_OK;
}

static int alloc_vision(tpc_model *m) {
  if (!m->vd.has_vision) return TPC_OK;
  tpc_vision_desc *v = &m->vd;
  size_t cols = (size_t)v->tiles * v->patches, rows = (size_t)m->xrows;
  int rc;
  if ((rc = dev_alloc(m, &m->img_states, m->img_states_bytes, "the image states")) ||
      (rc = dev_alloc(m, &m->xhidden_in, rows * m->hidden_bytes, "hidden rows")) ||
      (rc = dev_alloc(m, &m->xhidden_out, rows * m->hidden_bytes, "hidden rows")) ||
      (rc = dev_alloc(m, &m->xmask_prefill, rows * cols * 2, "the cross-attention mask")) ||
      (rc = dev_alloc(m, &m->row_mask, rows * 2, "the text row mask")) ||
      (rc = dev_alloc(m, &m->xmask_decode, cols * 2, "the cross-attention mask")))
    return rc;
  m->xbuf = calloc(rows * cols + rows, sizeof(unsigned short));
  m->img_tiles = calloc((size_t)v->tiles, sizeof(int));
  if (v->pixel_dtype != BMAPI_F32)
    m->pix_buf = calloc((size_t)v->tiles * v->channels * v->image_size * v->image_size, 2);
  if (!m->xbuf || !m->img_tiles || (v->pixel_dtype != BMAPI_F32 && !m->pix_buf))
    return fail(m, TPC_E_NOMEM, "out of host memory");
  return TPC_OK;
}

static void free_vision(tpc_model *m) {
  bmapi_mem_t *mems[] = {&m->img_states, &m->xhidden_in, &m->xhidden_out, &m->xmask_prefill, &m->row_mask,
                         &m->xmask_decode};
  for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++)
    if (mems[i]->size && m->handles[0]) RT.free_device(H(m), *mems[i]);
  free(m->is_cross);
  free(m->xbuf);
  free(m->img_tiles);
  free(m->pix_buf);
}

/* Validate the image settings of a prefill of n ids and limit the reusable
 * prefix *lcp to rows computed with the same image and image position. */
/* Limit the reusable rows [0, *lcp) to those computed with the image state
 * this prompt needs.  pinned: they come from the pinned (text-only) copy. */
static int image_checks(tpc_model *m, int n, int *lcp, int pinned) {
  int want = m->want_img_pos;
  if (want >= 0) {
    if (!m->img_loaded) return fail(m, TPC_E_ARG, "an image position was given but no image is set");
    if (want >= n)
      return fail(m, TPC_E_ARG, "the image token position %d is outside the %d-token prompt", want, n);
    if (m->d.is_dynamic) return fail(m, TPC_E_MODEL, "images on dynamic (--dynamic) bmodels are not supported");
  }
  int same;
  if (pinned) same = 1; /* text-only rows, all before the image token (checked by the caller) */
  else if (want < 0) same = m->seq_img_pos < 0;
  else same = m->seq_img_pos >= 0 && m->seq_img_gen == m->img_gen;
  if (!same) {
    *lcp = 0;
  } else if (want >= 0) {
    /* A moved image token: rows before both positions saw no tile either way. */
    int lo = want < m->seq_img_pos ? want : m->seq_img_pos;
    if (!pinned && want != m->seq_img_pos && *lcp > lo) *lcp = lo;
    /* Decode nets have no text_row_mask: rows before the image token can
     * only come from a prefill. */
    if (*lcp < want) *lcp = 0;
  }
  return TPC_OK;
}

static int upload_cross_masks(tpc_model *m, int n, int rows) {
  tpc_vision_desc *v = &m->vd;
  int xl = v->cross_layers[0], cols = v->tiles * v->patches, pos = m->seq_img_pos, rc;
  net_t b = m->block[xl];
  if (rows != m->xrows)
    return fail(m, TPC_E_MODEL, "cross-attention block_%d takes %d rows but the prefill has %d", xl, m->xrows, rows);
  int mdt = b->input_dtypes[3], rdt = b->input_dtypes[2];
  unsigned short neg = mask_min(mdt), one = half_one(rdt);
  unsigned short *xm = m->xbuf, *rm = m->xbuf + (size_t)rows * cols;
  for (int i = 0; i < rows; i++) {
    int sees = i >= pos && i < n;
    rm[i] = sees ? one : 0;
    unsigned short *row = xm + (size_t)i * cols;
    for (int t = 0; t < v->tiles; t++) {
      unsigned short val = sees && !m->img_tiles[t] ? neg : 0;
      for (int p = 0; p < v->patches; p++) row[t * v->patches + p] = val;
    }
  }
  if ((rc = upload(m, m->xmask_prefill, 0, xm, (size_t)rows * cols * 2, "cross-attention mask")) ||
      (rc = upload(m, m->row_mask, 0, rm, (size_t)rows * 2, "text row mask")))
    return rc;
  return TPC_OK;
}

static int cross_prefill_layer(tpc_model *m, int layer, int rows, bmapi_mem_t *hidden) {
  net_t b = m->block[layer];
  bmapi_tensor_t in[8], out[8];
  int rc;
  own_tensors(b, 0, in, out);
  if (in[0].shape.dims[1] != rows)
    return fail(m, TPC_E_MODEL, "cross-attention block_%d takes %d rows, the prefill has %d", layer,
                in[0].shape.dims[1], rows);
  size_t hb = (size_t)rows * m->hidden_bytes;
  if ((rc = copy_d2d(m, m->xhidden_in, 0, *hidden, 0, hb, "hidden rows"))) return rc;
  in[0].device_mem = m->xhidden_in;
  in[1].device_mem = m->img_states;
  in[2].device_mem = m->row_mask;
  in[3].device_mem = m->xmask_prefill;
  out[0].device_mem = m->xhidden_out;
  out[1].device_mem = m->kv_k[layer];
  out[2].device_mem = m->kv_v[layer];
  if ((rc = launch(m, b, in, out))) return rc;
  *hidden = m->xhidden_out;
  return TPC_OK;
}

static int cross_decode_layer(tpc_model *m, int layer, bmapi_mem_t *hidden) {
  net_t c = m->block_cache[layer];
  bmapi_tensor_t in[8], out[8];
  int rc;
  own_tensors(c, 0, in, out);
  if (m->direct_io) {
    in[0].device_mem = *hidden;
  } else if ((rc = copy_d2d(m, in[0].device_mem, 0, *hidden, 0, m->hidden_bytes, "hidden state"))) {
    return rc;
  }
  in[1].device_mem = m->xmask_decode;
  in[2].device_mem = m->kv_k[layer];
  in[3].device_mem = m->kv_v[layer];
  if ((rc = launch(m, c, in, out))) return rc;
  *hidden = out[0].device_mem;
  return TPC_OK;
}

int tpc_describe_vision(const tpc_model *m, tpc_vision_desc *out) {
  if (!m || !out) return TPC_E_ARG;
  *out = m->vd;
  return TPC_OK;
}

int tpc_set_image(tpc_model *m, const float *pixels, int tiles, int size, int aspect_ratio_id,
                  const int *aspect_ratio_mask) {
  if (!m) return TPC_E_ARG;
  tpc_vision_desc *v = &m->vd;
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
  net_t vit = m->vit;
  bmapi_tensor_t in[4], out[2];
  own_tensors(vit, 0, in, out);
  size_t count = (size_t)tiles * v->channels * size * size;
  int rc;
  if (v->pixel_dtype == BMAPI_F32) {
    rc = upload(m, in[0].device_mem, 0, pixels, count * 4, "pixel values");
  } else {
    unsigned short *h = m->pix_buf;
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
  if (!rc) rc = copy_d2d(m, m->img_states, 0, out[0].device_mem, 0, m->img_states_bytes, "image states");
  if (!rc) {
    int cols = tiles * v->patches;
    unsigned short neg = mask_min(m->block_cache[v->cross_layers[0]]->input_dtypes[1]);
    for (int t = 0; t < tiles; t++) {
      m->img_tiles[t] = aspect_ratio_mask[t] != 0;
      for (int p = 0; p < v->patches; p++) m->xbuf[t * v->patches + p] = m->img_tiles[t] ? 0 : neg;
    }
    rc = upload(m, m->xmask_decode, 0, m->xbuf, (size_t)cols * 2, "cross-attention mask");
  }
  if (!rc) rc = sync_device(m);
  /* The cached rows (and embedding_cache's input, in shared IO) belong to
   * the previous image or to none. */
  m->position = 0;
  m->token_on_device = 0;
  m->img_gen++;
  m->img_loaded = rc == TPC_OK;
  end_call(m);
  return rc;
}

int tpc_set_image_pos(tpc_model *m, int image_pos) {
  if (!m) return TPC_E_ARG;
  if (image_pos < -1) return fail(m, TPC_E_ARG, "bad image position %d", image_pos);
  if (image_pos >= 0 && !m->vd.has_vision)
    return fail(m, TPC_E_ARG, "this bmodel has no vision encoder (no vit net with cross-attention layers): "
                "it cannot take images");
  m->want_img_pos = image_pos;
  return TPC_OK;
}

int tpc_image_states(tpc_model *m, float *out, int n) {
  if (!m || !out) return TPC_E_ARG;
  if (!m->img_loaded) return fail(m, TPC_E_ARG, "no image is set");
  int dt = m->vit->output_dtypes[0], es = dtype_size(dt);
  size_t count = m->img_states_bytes / (size_t)es;
  if ((size_t)n < count) return fail(m, TPC_E_ARG, "buffer too small for %zu image states", count);
  void *raw = malloc(m->img_states_bytes);
  if (!raw) return fail(m, TPC_E_NOMEM, "out of host memory");
  int rc = download(m, raw, m->img_states, 0, m->img_states_bytes, "image states");
  if (!rc)
    for (size_t i = 0; i < count; i++)
      out[i] = es == 4 ? ((float *)raw)[i] : half_to_float(((unsigned short *)raw)[i], dt);
  free(raw);
  return rc;
}

/* ------------------------------------------------------------------ */
/* open / close / inspection                                            */
/* ------------------------------------------------------------------ */

static int alloc_cross_kv(tpc_model *m, int layer);
static int alloc_vision(tpc_model *m);
static void free_vision(tpc_model *m);

static int alloc_state(tpc_model *m) {
  tpc_desc *d = &m->d;
  int L = d->num_layers;
  /* io_alone nets keep their IO apart, unless the bmodel was loaded into
   * caller memory: then every basic-mode net's IO sits in one shared
   * activation area (one net's output is the next one's scratch), and the
   * copying discipline of basic mode is the safe one. */
  m->direct_io = d->addr_mode == 1 && !m->shared_neuron;
  m->kv_k = calloc((size_t)L, sizeof(bmapi_mem_t));
  m->kv_v = calloc((size_t)L, sizeof(bmapi_mem_t));
  m->ids_cap = d->seq_len;
  for (int s = 0; s < m->embedding->stage_num; s++)
    if (m->embedding->stages[s].input_shapes[0].dims[1] > m->ids_cap)
      m->ids_cap = m->embedding->stages[s].input_shapes[0].dims[1];
  m->ids_buf = calloc((size_t)m->ids_cap, sizeof(int32_t));
  if (!m->kv_k || !m->kv_v || !m->ids_buf) return fail(m, TPC_E_NOMEM, "out of host memory");
  m->tokens = calloc((size_t)d->kv_len, sizeof(int32_t));
  if (!m->tokens) return fail(m, TPC_E_NOMEM, "out of host memory");
  if (d->lm_head_kind == 2) {
    m->logits = calloc((size_t)d->vocab_size, sizeof(float));
    m->logits_raw = calloc((size_t)d->vocab_size, 4);
    m->probs = calloc((size_t)d->vocab_size, sizeof(float));
    m->order = calloc((size_t)d->vocab_size, sizeof(int));
    if (!m->logits || !m->logits_raw || !m->probs || !m->order)
      return fail(m, TPC_E_NOMEM, "out of host memory");
  }
  size_t bytes = (size_t)d->kv_len * m->kv_row_bytes;
  for (int i = 0; i < L; i++) {
    if (m->is_cross && m->is_cross[i]) {
      int rc = alloc_cross_kv(m, i);
      if (rc) return rc;
      continue;
    }
    if (m->direct_io) {
      m->kv_k[i] = m->block_cache[i]->stages[m->cache_stage].input_mems[3];
      m->kv_v[i] = m->block_cache[i]->stages[m->cache_stage].input_mems[4];
    } else {
      m->own_kv = 1;
      if (RT.malloc_device_byte(H(m), &m->kv_k[i], (unsigned int)bytes) != 0 ||
          RT.malloc_device_byte(H(m), &m->kv_v[i], (unsigned int)bytes) != 0)
        return fail(m, TPC_E_NOMEM, "not enough device memory for the KV cache (%lld MB)",
                    d->kv_cache_bytes >> 20);
    }
  }
  return alloc_vision(m);
}

/* Open a bmodel; with `handle` the model uses that device handle (it stays
 * the caller's), with `mem` the bmodel is loaded into the memory it gives. */
static int open_model(const char *bmodel_path, const int *devids, int num_devids, bm_handle_t handle,
                      bmapi_mem_info_t *mem, tpc_model **out, char *err, int errlen) {
  if (out) *out = NULL;
  if (!out || !bmodel_path || !devids || num_devids < 1 || num_devids > MAX_DEVICES) {
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
  tpc_model *m = calloc(1, sizeof *m);
  if (!m) {
    set_err(err, errlen, "out of host memory");
    return TPC_E_NOMEM;
  }
  m->mask_zeros = -1;
  m->shared_neuron = mem != NULL;
  m->want_img_pos = m->seq_img_pos = -1;
  int rc = TPC_OK;
  if (handle) {
    m->handles[0] = handle;
    m->devids[0] = devids[0];
    m->num_handles = 1;
    m->borrowed_handles = 1;
  }
  for (int i = 0; i < num_devids && !handle; i++) {
    bm_status_t st = RT.dev_request(&m->handles[i], devids[i]);
    if (st != 0 || !m->handles[i]) {
      rc = fail(m, TPC_E_DEVICE, "cannot open device %d (bm_dev_request returned %d)", devids[i], st);
      goto out;
    }
    m->devids[i] = devids[i];
    m->num_handles = i + 1;
  }
  m->rt = num_devids > 1 ? RT.create_ex(m->handles, num_devids) : RT.create(m->handles[0]);
  if (!m->rt) {
    rc = fail(m, TPC_E_DEVICE, "cannot create the runtime on device %d", devids[0]);
    goto out;
  }
  if (!(mem ? RT.load_bmodel_with_mem(m->rt, bmodel_path, mem) : RT.load_bmodel(m->rt, bmodel_path))) {
    rc = fail(m, TPC_E_LOAD,
              "the runtime could not load %s (corrupt file, a bmodel for another chip, or not "
              "enough device memory; see the log)", bmodel_path);
    goto out;
  }
  m->num_nets = RT.get_network_number(m->rt);
  RT.get_network_names(m->rt, &m->net_names);
  if (m->num_nets <= 0 || !m->net_names) {
    rc = fail(m, TPC_E_MODEL, "%s holds no networks", bmodel_path);
    goto out;
  }
  if ((rc = describe_nets(m))) goto out;
  if (m->d.num_device != num_devids) {
    rc = fail(m, TPC_E_DEVICE,
              "this bmodel was compiled for %d device%s but %d device id%s given",
              m->d.num_device, m->d.num_device == 1 ? "" : "s", num_devids, num_devids == 1 ? " was" : "s were");
    goto out;
  }
  if (m->d.num_device > 1) {
    if ((rc = md_prepare(m))) goto out;
  } else if ((rc = alloc_state(m))) {
    goto out;
  }
  rc = tpc_reset(m);
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
  if (m->own_kv && m->kv_k && m->kv_v) {
    for (int i = 0; i < m->d.num_layers; i++) {
      if (m->kv_k[i].size) RT.free_device(H(m), m->kv_k[i]);
      if (m->kv_v[i].size) RT.free_device(H(m), m->kv_v[i]);
    }
  }
  if (m->prefix_mem.size) RT.free_device(H(m), m->prefix_mem);
  free(m->prefix_tokens);
  free_vision(m);
  if (m->rt) RT.destroy(m->rt);
  for (int i = 0; i < m->num_handles && !m->borrowed_handles; i++)
    if (m->handles[i]) RT.dev_free(m->handles[i]);
  free((void *)m->net_names);
  free(m->block);
  free(m->block_cache);
  free(m->block_kv);
  free(m->kv_k);
  free(m->kv_v);
  free(m->mask_buf);
  free(m->ids_buf);
  free(m->logits);
  free(m->logits_raw);
  free(m->tokens);
  free(m->probs);
  free(m->order);
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

/* ------------------------------------------------------------------ */
/* 9. multi-device layout plan (pure: a description in, a plan out)     */
/* ------------------------------------------------------------------ */

static int net_kind(const char *name) {
  if (!strcmp(name, "embedding") || !strcmp(name, "embedding_cache")) return TPC_NET_EMBEDDING;
  if (!strcmp(name, "lm_head")) return TPC_NET_LM_HEAD;
  if (!strncmp(name, "block_cache_", 12)) return TPC_NET_BLOCK_CACHE;
  if (!strncmp(name, "block_kv_", 9)) return TPC_NET_BLOCK_KV;
  if (!strncmp(name, "block_", 6)) return TPC_NET_BLOCK;
  return TPC_NET_OTHER;
}

static const char *role_name(int r) {
  static const char *const names[TPC_NUM_ROLES] = {"passthrough", "input_ids", "hidden states", "position_ids",
                                                   "attention_mask", "history_k", "history_v", "K rows",
                                                   "V rows"};
  return r >= 0 && r < TPC_NUM_ROLES ? names[r] : "?";
}

/* The role an input's name announces (the converter's names), or -1. */
static int input_role_by_name(const char *n) {
  if (!n) return -1;
  if (!strcmp(n, "input_ids")) return TPC_ROLE_IDS;
  if (!strcmp(n, "input_states") || !strcmp(n, "hidden_states")) return TPC_ROLE_HIDDEN;
  if (!strcmp(n, "position_ids")) return TPC_ROLE_POS;
  if (!strcmp(n, "attention_mask")) return TPC_ROLE_MASK;
  if (!strncmp(n, "history_k", 9)) return TPC_ROLE_HIST_K;
  if (!strncmp(n, "history_v", 9)) return TPC_ROLE_HIST_V;
  return -1;
}

/* Inputs in the order a net of this kind takes them (older converters'
 * names differ; then position within the device's inputs decides). */
static int kind_input_roles(int kind, int has_mask, int *roles) {
  int n = 0;
  switch (kind) {
    case TPC_NET_EMBEDDING: roles[n++] = TPC_ROLE_IDS; break;
    case TPC_NET_LM_HEAD: roles[n++] = TPC_ROLE_HIDDEN; break;
    case TPC_NET_BLOCK:
      roles[n++] = TPC_ROLE_HIDDEN; roles[n++] = TPC_ROLE_POS;
      if (has_mask) roles[n++] = TPC_ROLE_MASK;
      break;
    case TPC_NET_BLOCK_CACHE:
      roles[n++] = TPC_ROLE_HIDDEN; roles[n++] = TPC_ROLE_POS; roles[n++] = TPC_ROLE_MASK;
      roles[n++] = TPC_ROLE_HIST_K; roles[n++] = TPC_ROLE_HIST_V;
      break;
    case TPC_NET_BLOCK_KV:
      roles[n++] = TPC_ROLE_HIDDEN; roles[n++] = TPC_ROLE_POS;
      roles[n++] = TPC_ROLE_HIST_K; roles[n++] = TPC_ROLE_HIST_V;
      break;
    default: break;
  }
  return n;
}

static int same_shape(const tpc_tensor_info *a, const tpc_tensor_info *b) {
  if (a->dtype != b->dtype || a->num_dims != b->num_dims) return 0;
  for (int i = 0; i < a->num_dims && i < 8; i++)
    if (a->dims[i] != b->dims[i]) return 0;
  return 1;
}

#define PLAN_FAIL(...) do { set_err(err, errlen, __VA_ARGS__); return TPC_E_MODEL; } while (0)

int tpc_plan_net(const tpc_net_desc *net, int num_device, tpc_net_plan *p, char *err, int errlen) {
  if (!net || !p || !net->name || num_device < 1 || num_device > TPC_MAX_DEV || net->num_inputs < 0 ||
      net->num_outputs < 0 || (net->num_inputs && !net->inputs) || (net->num_outputs && !net->outputs)) {
    set_err(err, errlen, "bad arguments to the layout planner");
    return TPC_E_ARG;
  }
  if (net->num_inputs > TPC_MAX_IO || net->num_outputs > TPC_MAX_IO)
    PLAN_FAIL("net %s has %d inputs and %d outputs; at most %d are supported", net->name, net->num_inputs,
              net->num_outputs, TPC_MAX_IO);
  memset(p, 0, sizeof *p);
  memset(p->role_input, -1, sizeof p->role_input);
  memset(p->role_output, -1, sizeof p->role_output);
  p->kind = net_kind(net->name);
  p->num_device = num_device;
  p->num_inputs = net->num_inputs;
  p->num_outputs = net->num_outputs;
  const tpc_tensor_info *in = net->inputs, *out = net->outputs;

  for (int i = 0; i < net->num_inputs; i++) {
    p->in_tie[i] = -1;
    p->in_device[i] = in[i].device;
    if (in[i].device < 0 || in[i].device >= num_device)
      PLAN_FAIL("net %s: input %d (%s) lives on device %d, but the bmodel is for %d device%s", net->name, i,
                in[i].name ? in[i].name : "?", in[i].device, num_device, num_device == 1 ? "" : "s");
  }
  for (int i = 0; i < net->num_outputs; i++) {
    p->out_device[i] = out[i].device;
    if (out[i].device < 0 || out[i].device >= num_device)
      PLAN_FAIL("net %s: output %d (%s) lives on device %d, but the bmodel is for %d device%s", net->name, i,
                out[i].name ? out[i].name : "?", out[i].device, num_device, num_device == 1 ? "" : "s");
  }

  /* Inputs, device by device: by name, else by position. */
  int has_mask = 0;
  for (int i = 0; i < net->num_inputs; i++)
    if (input_role_by_name(in[i].name) == TPC_ROLE_MASK) has_mask = 1;
  for (int d = 0; d < num_device; d++) {
    int named = 0, count = 0;
    for (int i = 0; i < net->num_inputs; i++) {
      if (in[i].device != d) continue;
      count++;
      int r = input_role_by_name(in[i].name);
      if (r < 0 || p->role_input[r][d] >= 0) continue;
      p->in_role[i] = r;
      p->role_input[r][d] = i;
      named++;
    }
    if (named == 0 && count > 0) {
      int roles[8], nr = kind_input_roles(p->kind, 1, roles), k = 0;
      if (p->kind == TPC_NET_BLOCK && count < 3) nr = kind_input_roles(p->kind, 0, roles);
      for (int i = 0; i < net->num_inputs && k < nr; i++) {
        if (in[i].device != d) continue;
        p->in_role[i] = roles[k];
        p->role_input[roles[k]][d] = i;
        k++;
      }
    }
  }
  int need[8], nneed = kind_input_roles(p->kind, has_mask, need);
  for (int d = 0; d < num_device; d++)
    for (int k = 0; k < nneed; k++)
      if (p->role_input[need[k]][d] < 0)
        PLAN_FAIL("net %s has no %s input on device %d", net->name, role_name(need[k]), d);

  /* Outputs, device by device: the hidden output (or lm_head's result)
   * comes first, then the new K and V rows; anything else passes through. */
  int blocky = p->kind == TPC_NET_BLOCK || p->kind == TPC_NET_BLOCK_CACHE || p->kind == TPC_NET_BLOCK_KV;
  for (int d = 0; d < num_device; d++) {
    for (int i = 0; i < net->num_outputs; i++) {
      if (out[i].device != d) continue;
      const char *n = out[i].name ? out[i].name : "";
      int kv_like = blocky && out[i].num_dims == 4;
      int has_k = p->role_output[TPC_ROLE_K][d] >= 0, has_v = p->role_output[TPC_ROLE_V][d] >= 0;
      int r = TPC_ROLE_NONE;
      if (blocky && !strncmp(n, "k_cache", 7) && !has_k)
        r = TPC_ROLE_K;
      else if (blocky && !strncmp(n, "v_cache", 7) && !has_v)
        r = TPC_ROLE_V;
      else if (p->kind != TPC_NET_OTHER && !kv_like && !has_k && !has_v &&
               p->role_output[TPC_ROLE_HIDDEN][d] < 0)
        r = TPC_ROLE_HIDDEN;
      else if (kv_like && !has_k)
        r = TPC_ROLE_K;
      else if (kv_like && !has_v)
        r = TPC_ROLE_V;
      p->out_role[i] = r;
      if (r != TPC_ROLE_NONE) p->role_output[r][d] = i;
    }
    if (p->role_output[TPC_ROLE_HIDDEN][d] >= 0) p->hidden_out_devices |= 1 << d;
    if (blocky && (p->role_output[TPC_ROLE_K][d] < 0 || p->role_output[TPC_ROLE_V][d] < 0))
      PLAN_FAIL("net %s has no new K/V output on device %d", net->name, d);
  }
  if (p->kind != TPC_NET_OTHER && !p->hidden_out_devices)
    PLAN_FAIL("net %s has no %s output on any device", net->name,
              p->kind == TPC_NET_LM_HEAD ? "token/logits" : "hidden states");

  /* Each device's share of the KV cache: equal shapes, heads add up. */
  if (p->kind == TPC_NET_BLOCK_CACHE || p->kind == TPC_NET_BLOCK_KV) {
    const tpc_tensor_info *k0 = &in[p->role_input[TPC_ROLE_HIST_K][0]];
    p->kv_heads = k0->num_dims >= 4 ? k0->dims[2] : 1;
    for (int d = 0; d < num_device; d++) {
      const tpc_tensor_info *k = &in[p->role_input[TPC_ROLE_HIST_K][d]];
      const tpc_tensor_info *v = &in[p->role_input[TPC_ROLE_HIST_V][d]];
      if (!same_shape(k, k0) || !same_shape(v, k0))
        PLAN_FAIL("net %s: the KV history of device %d differs in shape from device 0's", net->name, d);
      p->kv_heads_total += p->kv_heads;
    }
  }

  if (p->kind == TPC_NET_BLOCK) { /* a prefill's new K rows: the same share per device */
    const tpc_tensor_info *k0 = &out[p->role_output[TPC_ROLE_K][0]];
    p->kv_heads = k0->num_dims >= 4 ? k0->dims[2] : 1;
    for (int d = 0; d < num_device; d++) {
      const tpc_tensor_info *k = &out[p->role_output[TPC_ROLE_K][d]];
      const tpc_tensor_info *v = &out[p->role_output[TPC_ROLE_V][d]];
      if (!same_shape(k, k0) || !same_shape(v, k0))
        PLAN_FAIL("net %s: the new K/V rows of device %d differ in shape from device 0's", net->name, d);
      p->kv_heads_total += p->kv_heads;
    }
  }

  /* Passthrough inputs: fed by the same device's first unused passthrough
   * output of equal shape (the compiler's cross-device reduction result),
   * else they keep the runtime's own buffer. */
  int used[TPC_MAX_IO] = {0};
  for (int i = 0; i < net->num_inputs; i++) {
    if (p->in_role[i] != TPC_ROLE_NONE) continue;
    p->num_passthrough_in++;
    for (int o = 0; o < net->num_outputs; o++) {
      if (used[o] || p->out_role[o] != TPC_ROLE_NONE || out[o].device != in[i].device) continue;
      if (!same_shape(&out[o], &in[i])) continue;
      used[o] = 1;
      p->in_tie[i] = o;
      p->num_tied++;
      break;
    }
  }
  return TPC_OK;
}

/* The device count a bmodel file was compiled for, read from its own
 * description (FlatBuffers: Model.device_num, field 7) before the runtime
 * sees the file: a mismatched count must be an error, not a crash. */
static int file_device_num(const char *path, int *out, char *err, int errlen) {
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

/* ------------------------------------------------------------------ */
/* 10. multi-device execution (follows the plans of section 9)         */
/* ------------------------------------------------------------------ */
/*
 * Not verified on hardware: the simulator has one device.  What runs here
 * is the plan checked by the unit tests: one launch per net over all
 * devices; host data (ids, positions, masks) uploaded to every device's
 * input; each device keeps its share of the KV cache (its history_k/v
 * inputs, with that device's KV heads); hidden states that a net leaves on
 * fewer devices than the next net reads them from are copied across
 * through the host.  Kept simple (uploads every layer, copies K/V rows
 * after each launch) rather than fast.
 */

static int md_check(tpc_model *m, bm_status_t st, const char *what, int dev) {
  if (st != 0) return fail(m, TPC_E_RUNTIME, "%s on device %d failed (status %d)", what, m->devids[dev], st);
  return TPC_OK;
}

static int md_upload(tpc_model *m, int dev, bmapi_mem_t dst, size_t off, const void *src, size_t size,
                     const char *what) {
  m->timing.copies++;
  return md_check(m, TIMED(RT.s2d(m->handles[dev], dst, (void *)src, (unsigned int)size, (unsigned int)off)),
                  what, dev);
}

static int md_download(tpc_model *m, int dev, void *dst, bmapi_mem_t src, size_t off, size_t size,
                       const char *what) {
  m->timing.copies++;
  return md_check(m, TIMED(RT.d2s(m->handles[dev], dst, src, (unsigned int)size, (unsigned int)off)), what, dev);
}

static int md_d2d(tpc_model *m, int dev, bmapi_mem_t dst, size_t dst_off, bmapi_mem_t src, size_t src_off,
                  size_t size, const char *what) {
  m->timing.copies++;
  return md_check(m, TIMED(RT.d2d(m->handles[dev], dst, dst_off, src, src_off, size)), what, dev);
}

static int md_sync_all(tpc_model *m) {
  for (int d = 0; d < m->num_handles; d++) {
    bm_status_t st = TIMED(RT.thread_sync(m->handles[d]));
    if (st != 0) return fail(m, TPC_E_RUNTIME, "device %d failed while running the model (status %d)",
                             m->devids[d], st);
  }
  return TPC_OK;
}

static const tpc_net_plan *md_plan(tpc_model *m, net_t n) {
  for (int i = 0; i < m->num_nets; i++)
    if (!strcmp(m->net_names[i], n->name)) return &m->plans[i];
  return NULL;
}

int tpc_net_plan_of(const tpc_model *m, const char *name, tpc_net_plan *out) {
  if (!m || !name || !out || !m->plans) return TPC_E_ARG;
  for (int i = 0; i < m->num_nets; i++)
    if (!strcmp(m->net_names[i], name)) {
      *out = m->plans[i];
      return TPC_OK;
    }
  return TPC_E_ARG;
}

/* Tensors over the net's own buffers, passthrough inputs tied to their
 * outputs as planned. */
static void md_tensors(net_t n, const tpc_net_plan *p, bmapi_tensor_t *in, bmapi_tensor_t *out) {
  own_tensors(n, 0, in, out);
  for (int i = 0; i < n->input_num; i++)
    if (p->in_tie[i] >= 0) in[i].device_mem = out[p->in_tie[i]].device_mem;
}

/* Give every device's `role` input of net n the hidden rows in hid[d]
 * (bytes each); devices without them get a copy of the first device's
 * through the host. */
static int md_feed_hidden(tpc_model *m, const tpc_net_plan *p, bmapi_tensor_t *in, const bmapi_mem_t *hid,
                          const int *have, size_t bytes) {
  int N = m->d.num_device, src = -1, rc;
  for (int d = 0; d < N && src < 0; d++) if (have[d]) src = d;
  if (src < 0) return fail(m, TPC_E_MODEL, "no device holds the hidden states");
  int fetched = 0;
  for (int d = 0; d < N; d++) {
    int k = p->role_input[TPC_ROLE_HIDDEN][d];
    if (have[d]) { in[k].device_mem = hid[d]; continue; }
    if (!fetched) {
      if ((rc = md_sync_all(m))) return rc;
      if (bytes > m->md_host_bytes) return fail(m, TPC_E_MODEL, "hidden states larger than expected");
      if ((rc = md_download(m, src, m->md_host, hid[src], 0, bytes, "hidden states"))) return rc;
      fetched = 1;
    }
    if ((rc = md_upload(m, d, in[k].device_mem, 0, m->md_host, bytes, "hidden states"))) return rc;
  }
  return TPC_OK;
}

static int md_launch(tpc_model *m, net_t n, bmapi_tensor_t *in, bmapi_tensor_t *out) {
  m->timing.launches++;
  bool ok = TIMED(RT.launch_tensor_ex(m->rt, n->name, in, n->input_num, out, n->output_num, true, false));
  if (!ok) return fail(m, TPC_E_RUNTIME, "the runtime refused to launch net %s", n->name);
  return TPC_OK;
}

/* Hidden outputs of a launched net, per device. */
static void md_hidden_out(tpc_model *m, const tpc_net_plan *p, const bmapi_tensor_t *out, bmapi_mem_t *hid,
                          int *have) {
  for (int d = 0; d < m->d.num_device; d++) {
    int k = p->role_output[TPC_ROLE_HIDDEN][d];
    have[d] = k >= 0;
    if (k >= 0) hid[d] = out[k].device_mem;
  }
}

static int md_head(tpc_model *m, const bmapi_mem_t *hid, const int *have, size_t row_off, int end, int *tok) {
  int N = m->d.num_device, rc;
  net_t lm = m->lm_head;
  const tpc_net_plan *p = m->p_lm;
  bmapi_tensor_t in[TPC_MAX_IO], out[TPC_MAX_IO];
  bmapi_mem_t rows[TPC_MAX_DEV];
  md_tensors(lm, p, in, out);
  for (int d = 0; d < N; d++) if (have[d]) rows[d] = mem_at(hid[d], row_off, m->hidden_bytes);
  if ((rc = md_feed_hidden(m, p, in, rows, have, m->hidden_bytes))) return rc;
  if ((rc = md_launch(m, lm, in, out))) return rc;
  if ((rc = md_sync_all(m))) return rc;
  int src = -1;
  for (int d = 0; d < N && src < 0; d++) if (p->role_output[TPC_ROLE_HIDDEN][d] >= 0) src = d;
  bmapi_mem_t res = out[p->role_output[TPC_ROLE_HIDDEN][src]].device_mem;
  if (m->d.lm_head_kind == 1) {
    int32_t t = 0;
    if ((rc = md_download(m, src, &t, res, 0, 4, "the next token"))) return rc;
    *tok = t;
  } else {
    int v = m->d.vocab_size, es = dtype_size(m->d.logits_dtype), best = 0;
    if ((rc = md_download(m, src, m->logits_raw, res, 0, (size_t)v * es, "logits"))) return rc;
    for (int i = 0; i < v; i++) {
      m->logits[i] = es == 4 ? ((float *)m->logits_raw)[i]
                             : half_to_float(((unsigned short *)m->logits_raw)[i], m->d.logits_dtype);
      if (m->logits[i] > m->logits[best]) best = i;
    }
    *tok = sampling_active(m) ? host_sample(m, m->logits, end) : best;
  }
  m->last_token = *tok;
  m->token_on_device = 0;
  return TPC_OK;
}

static int md_prefill(tpc_model *m, const int *ids, int n, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  int N = d->num_device, rc;
  net_t emb = m->embedding;
  const tpc_net_plan *pe = m->p_emb;
  bmapi_tensor_t in[TPC_MAX_IO], out[TPC_MAX_IO];
  const tpc_net_plan *p0 = m->p_block[0];
  int rows = d->is_dynamic ? n : m->block[0]->stages[0].input_shapes[p0->role_input[TPC_ROLE_HIDDEN][0]].dims[1];
  int emb_rows = emb->is_dynamic ? n : emb->stages[0].input_shapes[pe->role_input[TPC_ROLE_IDS][0]].dims[1];
  if (emb_rows > m->ids_cap || rows > m->ids_cap) return fail(m, TPC_E_MODEL, "embedding input longer than expected");

  memset(m->ids_buf, 0, sizeof(int32_t) * (size_t)m->ids_cap);
  memcpy(m->ids_buf, ids, sizeof(int32_t) * (size_t)n);
  md_tensors(emb, pe, in, out);
  for (int dv = 0; dv < N; dv++) {
    int k = pe->role_input[TPC_ROLE_IDS][dv];
    if (emb->is_dynamic) set_len(&in[k].shape, n);
    if ((rc = md_upload(m, dv, in[k].device_mem, 0, m->ids_buf, sizeof(int32_t) * (size_t)emb_rows, "token ids")))
      return rc;
  }
  if ((rc = md_launch(m, emb, in, out))) return rc;
  bmapi_mem_t hid[TPC_MAX_DEV];
  int have[TPC_MAX_DEV];
  md_hidden_out(m, pe, out, hid, have);

  /* positions and the causal mask, the same on every device */
  int32_t *pos = calloc((size_t)rows, sizeof(int32_t));
  if (!pos) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < n; i++) pos[i] = i;
  int mask_rows = 0, mask_cols = 0;
  if (d->prefill_has_mask) {
    const bmapi_shape_t *ms = &m->block[0]->stages[0].input_shapes[p0->role_input[TPC_ROLE_MASK][0]];
    mask_rows = d->is_dynamic ? n : ms->dims[ms->num_dims - 2];
    mask_cols = d->is_dynamic ? n : ms->dims[ms->num_dims - 1];
    if ((rc = ensure_mask_buf(m, (size_t)mask_rows * mask_cols))) goto done;
    build_prefill_mask(m->mask_buf, mask_rows, mask_cols, n,
                       mask_min(m->block[0]->input_dtypes[p0->role_input[TPC_ROLE_MASK][0]]));
  }
  for (int i = 0; i < d->num_layers; i++) {
    net_t b = m->block[i];
    const tpc_net_plan *p = m->p_block[i];
    md_tensors(b, p, in, out);
    if ((rc = md_feed_hidden(m, p, in, hid, have, (size_t)rows * m->hidden_bytes))) goto done;
    for (int dv = 0; dv < N; dv++) {
      int kh = p->role_input[TPC_ROLE_HIDDEN][dv], kp = p->role_input[TPC_ROLE_POS][dv];
      int km = p->role_input[TPC_ROLE_MASK][dv];
      if (d->is_dynamic) {
        set_len(&in[kh].shape, n);
        set_len(&in[kp].shape, n);
        if (km >= 0) { in[km].shape.dims[in[km].shape.num_dims - 2] = n; in[km].shape.dims[in[km].shape.num_dims - 1] = n; }
      }
      if ((rc = md_upload(m, dv, in[kp].device_mem, 0, pos, sizeof(int32_t) * (size_t)rows, "position ids")))
        goto done;
      if (km >= 0 && (rc = md_upload(m, dv, in[km].device_mem, 0, m->mask_buf,
                                     (size_t)mask_rows * mask_cols * 2, "prefill mask")))
        goto done;
    }
    if ((rc = md_launch(m, b, in, out))) goto done;
    for (int dv = 0; dv < N; dv++) {
      size_t bytes = (size_t)n * m->kv_row_bytes;
      if ((rc = md_d2d(m, dv, m->md_kv_k[i * N + dv], 0, out[p->role_output[TPC_ROLE_K][dv]].device_mem, 0, bytes,
                       "K cache")) ||
          (rc = md_d2d(m, dv, m->md_kv_v[i * N + dv], 0, out[p->role_output[TPC_ROLE_V][dv]].device_mem, 0, bytes,
                       "V cache")))
        goto done;
    }
    md_hidden_out(m, p, out, hid, have);
  }
  memcpy(m->tokens, ids, sizeof(int32_t) * (size_t)n);
  if (need_head) {
    rc = md_head(m, hid, have, (size_t)(n - 1) * m->hidden_bytes, n, next_token);
  } else {
    m->token_on_device = 0;
    rc = md_sync_all(m);
  }
  if (!rc) m->position = n;
done:
  free(pos);
  return rc;
}

static int md_decode(tpc_model *m, int token, int need_head, int *next_token) {
  tpc_desc *d = &m->d;
  int N = d->num_device, p = m->position, rc, L = d->kv_len;
  net_t ec = m->embedding_cache;
  const tpc_net_plan *pe = m->p_embc;
  bmapi_tensor_t in[TPC_MAX_IO], out[TPC_MAX_IO];
  int32_t t = token, pos = p;
  md_tensors(ec, pe, in, out);
  for (int dv = 0; dv < N; dv++)
    if ((rc = md_upload(m, dv, in[pe->role_input[TPC_ROLE_IDS][dv]].device_mem, 0, &t, 4, "token id"))) return rc;
  if ((rc = md_launch(m, ec, in, out))) return rc;
  bmapi_mem_t hid[TPC_MAX_DEV];
  int have[TPC_MAX_DEV];
  md_hidden_out(m, pe, out, hid, have);
  unsigned short neg = mask_min(d->mask_dtype);
  if ((rc = ensure_mask_buf(m, (size_t)L + 1))) return rc;
  for (int j = 0; j <= L; j++) m->mask_buf[j] = (j < p || j == L) ? 0 : neg;
  for (int i = 0; i < d->num_layers; i++) {
    net_t c = m->block_cache[i];
    const tpc_net_plan *pl = m->p_cache[i];
    md_tensors(c, pl, in, out);
    if ((rc = md_feed_hidden(m, pl, in, hid, have, m->hidden_bytes))) return rc;
    for (int dv = 0; dv < N; dv++) {
      in[pl->role_input[TPC_ROLE_HIST_K][dv]].device_mem = m->md_kv_k[i * N + dv];
      in[pl->role_input[TPC_ROLE_HIST_V][dv]].device_mem = m->md_kv_v[i * N + dv];
      if ((rc = md_upload(m, dv, in[pl->role_input[TPC_ROLE_POS][dv]].device_mem, 0, &pos, 4, "position id")) ||
          (rc = md_upload(m, dv, in[pl->role_input[TPC_ROLE_MASK][dv]].device_mem, 0, m->mask_buf,
                          (size_t)(L + 1) * 2, "decode mask")))
        return rc;
    }
    if ((rc = md_launch(m, c, in, out))) return rc;
    for (int dv = 0; dv < N; dv++) {
      size_t off = (size_t)p * m->kv_row_bytes;
      if ((rc = md_d2d(m, dv, m->md_kv_k[i * N + dv], off, out[pl->role_output[TPC_ROLE_K][dv]].device_mem, 0,
                       m->kv_row_bytes, "K cache")) ||
          (rc = md_d2d(m, dv, m->md_kv_v[i * N + dv], off, out[pl->role_output[TPC_ROLE_V][dv]].device_mem, 0,
                       m->kv_row_bytes, "V cache")))
        return rc;
    }
    md_hidden_out(m, pl, out, hid, have);
  }
  m->tokens[p] = token;
  if (need_head) {
    if ((rc = md_head(m, hid, have, 0, p + 1, next_token))) return rc;
  } else if ((rc = md_sync_all(m))) {
    return rc;
  }
  m->position = p + 1;
  return TPC_OK;
}

static int md_reset(tpc_model *m) {
  int N = m->d.num_device;
  for (int i = 0; i < m->d.num_layers * N; i++) {
    int dv = i % N;
    bm_status_t st = TIMED(RT.memset_device(m->handles[dv], 0, m->md_kv_k[i]));
    if (st == 0) st = TIMED(RT.memset_device(m->handles[dv], 0, m->md_kv_v[i]));
    if (st != 0) return fail(m, TPC_E_RUNTIME, "clearing the KV cache on device %d failed (status %d)",
                             m->devids[dv], st);
  }
  return md_sync_all(m);
}

/* Plans for every net (the runtime's description of them), checks, and
 * the per-device KV shares. */
/* Every input of a layer net must be something we fill (a role) or the
 * output of one of its own steps (tied by the planner).  TPU-MLIR 1.24's
 * --num_device decode nets also declare tensors of the layer's attention
 * (rotary products, the concatenated K/V, ...) as inputs of their last step,
 * which no step computes and no caller can know: the net's output then
 * depends on leftover memory (tests/fakedev/unproduced.c shows it), so such
 * a bmodel is refused rather than allowed to answer wrongly.
 * TPUCHAT_MULTIDEV_UNCHECKED=1 runs it anyway, to diagnose. */
static int md_check_fed(tpc_model *m) {
  const char *env = getenv("TPUCHAT_MULTIDEV_UNCHECKED");
  if (env && !strcmp(env, "1")) return TPC_OK;
  for (int i = 0; i < 2 * m->d.num_layers; i++) {
    net_t n = i % 2 ? m->block_cache[i / 2] : m->block[i / 2];
    const tpc_net_plan *p = i % 2 ? m->p_cache[i / 2] : m->p_block[i / 2];
    int unfed = p->num_passthrough_in - p->num_tied;
    if (unfed <= 0) continue;
    const char *first = "?";
    for (int k = 0; k < n->input_num; k++)
      if (p->in_role[k] == TPC_ROLE_NONE && p->in_tie[k] < 0) { first = n->input_names[k]; break; }
    return fail(m, TPC_E_MODEL,
                "this multi-device bmodel cannot give right answers: net %s reads %d tensor%s that none of its "
                "steps computes (%s%s), a fault of the compiler that made it (TPU-MLIR 1.24 --num_device)",
                n->name, unfed, unfed == 1 ? "" : "s", first, unfed > 1 ? ", ..." : "");
  }
  return TPC_OK;
}

static int md_prepare(tpc_model *m) {
  tpc_desc *d = &m->d;
  int N = d->num_device, rc;
  if (!RT.new_net_info) return fail(m, TPC_E_LIB, "this libsophon is too old for multi-device bmodels");
  m->md = 1;
  m->plans = calloc((size_t)m->num_nets, sizeof(tpc_net_plan));
  m->p_block = calloc((size_t)d->num_layers, sizeof(*m->p_block));
  m->p_cache = calloc((size_t)d->num_layers, sizeof(*m->p_cache));
  if (!m->plans || !m->p_block || !m->p_cache) return fail(m, TPC_E_NOMEM, "out of host memory");
  for (int i = 0; i < m->num_nets; i++) {
    net_t n = RT.get_network_info(m->rt, m->net_names[i]);
    if (!n) return fail(m, TPC_E_MODEL, "net %s has no description", m->net_names[i]);
    if (n->input_num > TPC_MAX_IO || n->output_num > TPC_MAX_IO)
      return fail(m, TPC_E_MODEL, "net %s has too many inputs/outputs (%d/%d)", n->name, n->input_num,
                  n->output_num);
    tpc_tensor_info ins[TPC_MAX_IO], outs[TPC_MAX_IO];
    for (int k = 0; k < n->input_num + n->output_num; k++) {
      int is_out = k >= n->input_num, j = is_out ? k - n->input_num : k;
      tpc_tensor_info *t = is_out ? &outs[j] : &ins[j];
      const bmapi_shape_t *s = is_out ? &n->stages[0].output_shapes[j] : &n->stages[0].input_shapes[j];
      memset(t, 0, sizeof *t);
      t->name = is_out ? n->output_names[j] : n->input_names[j];
      t->dtype = is_out ? n->output_dtypes[j] : n->input_dtypes[j];
      t->num_dims = s->num_dims;
      for (int q = 0; q < s->num_dims && q < 8; q++) t->dims[q] = s->dims[q];
      const int *loc = is_out ? n->output_loc_devices : n->input_loc_devices;
      t->device = loc ? loc[j] : 0;
    }
    tpc_net_desc nd = {n->name, n->input_num, n->output_num, ins, outs};
    if ((rc = tpc_plan_net(&nd, N, &m->plans[i], m->err, sizeof m->err))) return rc;
  }
  m->p_emb = md_plan(m, m->embedding);
  m->p_embc = md_plan(m, m->embedding_cache);
  m->p_lm = md_plan(m, m->lm_head);
  for (int i = 0; i < d->num_layers; i++) {
    m->p_block[i] = md_plan(m, m->block[i]);
    m->p_cache[i] = md_plan(m, m->block_cache[i]);
  }
  if ((rc = md_check_fed(m))) return rc;
  d->prefill_has_mask = m->p_block[0]->role_input[TPC_ROLE_MASK][0] >= 0;
  /* Not driven across devices here: block_kv nets and on-device heads. */
  d->has_block_kv = 0;
  m->greedy_head = NULL;
  m->sample_head = NULL;
  d->has_greedy_head = d->has_sample_head = d->has_penalty_sample_head = 0;

  const tpc_net_plan *c0 = m->p_cache[0];
  const bmapi_shape_t *hk = &m->block_cache[0]->stages[0].input_shapes[c0->role_input[TPC_ROLE_HIST_K][0]];
  int kv_dtype = m->block_cache[0]->input_dtypes[c0->role_input[TPC_ROLE_HIST_K][0]];
  m->kv_row_bytes = shape_count(hk, 2) * (size_t)dtype_size(kv_dtype);
  d->kv_heads = c0->kv_heads_total;
  d->kv_cache_bytes = (long long)d->num_layers * 2 * d->kv_len * (long long)m->kv_row_bytes * N;

  /* host scratch (as alloc_state), plus the bounce buffer */
  m->ids_cap = d->seq_len;
  for (int s = 0; s < m->embedding->stage_num; s++)
    for (int k = 0; k < m->embedding->input_num; k++)
      if (m->embedding->stages[s].input_shapes[k].dims[1] > m->ids_cap)
        m->ids_cap = m->embedding->stages[s].input_shapes[k].dims[1];
  m->ids_buf = calloc((size_t)m->ids_cap, sizeof(int32_t));
  m->tokens = calloc((size_t)d->kv_len, sizeof(int32_t));
  m->md_host_bytes = (size_t)m->ids_cap * m->hidden_bytes;
  m->md_host = malloc(m->md_host_bytes);
  m->md_kv_k = calloc((size_t)d->num_layers * N, sizeof(bmapi_mem_t));
  m->md_kv_v = calloc((size_t)d->num_layers * N, sizeof(bmapi_mem_t));
  if (!m->ids_buf || !m->tokens || !m->md_host || !m->md_kv_k || !m->md_kv_v)
    return fail(m, TPC_E_NOMEM, "out of host memory");
  if (d->lm_head_kind == 2) {
    m->logits = calloc((size_t)d->vocab_size, sizeof(float));
    m->logits_raw = calloc((size_t)d->vocab_size, 4);
    m->probs = calloc((size_t)d->vocab_size, sizeof(float));
    m->order = calloc((size_t)d->vocab_size, sizeof(int));
    if (!m->logits || !m->logits_raw || !m->probs || !m->order) return fail(m, TPC_E_NOMEM, "out of host memory");
  }
  /* KV shares: io_alone decode nets own them (their history inputs),
   * otherwise they are allocated on each device. */
  size_t bytes = (size_t)d->kv_len * m->kv_row_bytes;
  for (int i = 0; i < d->num_layers; i++) {
    net_t c = m->block_cache[i];
    const tpc_net_plan *p = m->p_cache[i];
    for (int dv = 0; dv < N; dv++) {
      bmapi_mem_t *k = &m->md_kv_k[i * N + dv], *v = &m->md_kv_v[i * N + dv];
      if (c->addr_mode == 1) {
        *k = c->stages[0].input_mems[p->role_input[TPC_ROLE_HIST_K][dv]];
        *v = c->stages[0].input_mems[p->role_input[TPC_ROLE_HIST_V][dv]];
      } else {
        m->md_own_kv = 1;
        if (RT.malloc_device_byte(m->handles[dv], k, (unsigned int)bytes) != 0 ||
            RT.malloc_device_byte(m->handles[dv], v, (unsigned int)bytes) != 0)
          return fail(m, TPC_E_NOMEM, "not enough memory on device %d for its share of the KV cache",
                      m->devids[dv]);
      }
    }
  }
  return TPC_OK;
}

static void md_free(tpc_model *m) {
  if (m->md_own_kv && m->md_kv_k && m->md_kv_v) {
    int N = m->d.num_device;
    for (int i = 0; i < m->d.num_layers * N; i++) {
      if (m->md_kv_k[i].size) RT.free_device(m->handles[i % N], m->md_kv_k[i]);
      if (m->md_kv_v[i].size) RT.free_device(m->handles[i % N], m->md_kv_v[i]);
    }
  }
  free(m->plans);
  free(m->p_block);
  free(m->p_cache);
  free(m->md_kv_k);
  free(m->md_kv_v);
  free(m->md_host);
}

/* ------------------------------------------------------------------ */
/* 11. model families: one weight area for bmodels of the same weights */
/* ------------------------------------------------------------------ */

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
