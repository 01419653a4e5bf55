/*
 * shim_internal.h - what the shim's files share (Python never sees this).
 *
 * The shim is an LLM runner over libsophon's runtime; native/ holds one
 * file per concern:
 *   runtime.c    dlopen libbmlib/libbmrt, resolve the calls we use, devices
 *   load.c       open / close a bmodel, inspection for Python
 *   describe.c   read the nets (roles.c says which net plays which part)
 *   roles.c      the table of bmodel conventions and the matcher
 *   device.c     checked copies and launches, call timing
 *   masks.c      attention masks and half-float conversions
 *   kv.c         the KV cache: allocation, reset, rewind
 *   step.c       prefill and decode: one forward path for every convention
 *   verify.c     a block_kv chunk with the greedy pick at every row (lookup decoding)
 *   heads.c      lm_head, greedy/sample heads, host sampling
 *   prefix.c     a pinned shared prefix (KV rows kept aside)
 *   share.c      LLM-TPU's share-cache layout (shared / unshared nets)
 *   vision.c     the vit net and the cross-attention layers
 *   md_plan.c    multi-device layout plans (pure)
 *   md_exec.c    multi-device execution
 *   family.c     several bmodels over one weight area
 *
 * Two memory layouts exist (net_info.addr_mode):
 *   io_alone (1): every net owns its IO buffers.  The KV cache of layer i IS
 *     block_cache_i's history_k/history_v input buffers; nets are chained by
 *     passing the previous net's output memory as the next input, and new K/V
 *     rows are written by the nets straight into the cache.
 *   basic (0): IO buffers are shared between nets, so nothing may be left in
 *     them across launches: the cache lives in buffers we allocate, and
 *     hidden states / K/V rows are copied, as Sophgo's demos do.
 *
 * Two KV layouts exist (tpc_desc.kv_layout, from the convention):
 *   rows (TPC_KV_ROWS): K and V apart, position p at row p; a decode net
 *     returns the new row.
 *   sliding (TPC_KV_SLIDING, WizardCoder): one K|V row per token, the rows in
 *     use right-aligned in the L-row window; a decode net returns the window
 *     plus the new row and the window becomes its last L rows (kv.c).
 */
#ifndef TPUCHAT_SHIM_INTERNAL_H
#define TPUCHAT_SHIM_INTERNAL_H

#include "tpuchat_shim.h"
#include "bmrt_api.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define MAX_DEVICES 8
#define ERR_LEN 512
/* Functions shared between the shim's files, kept out of the module's
 * exported symbols. */
#define SHIM __attribute__((visibility("hidden")))

/* The runtime's entry points, resolved once per process (runtime.c). */
typedef struct {
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
} shim_runtime;
extern shim_runtime RT SHIM;

typedef const bmapi_net_info_t *net_t;

/* Nets by role, found once at open and fixed afterwards. */
typedef struct {
  net_t embedding, embedding_cache, lm_head, greedy_head;
  net_t sample_head;      /* sample_head (6 inputs) or penalty_sample_head (5); NULL: host sampling */
  int sample_in[6];       /* its input per TPC_SAMPLE_* role, -1 absent */
  net_t decode_embed;     /* the net decode tokens go through (embedding_cache or embedding) */
  int decode_stage;       /* and its stage */
  net_t *block, *block_cache; /* [num_layers] */
  net_t *block_kv;        /* [num_layers] when the bmodel has them */
  int block_kv_len;       /* longest chunk a block_kv net takes */
  int cache_stage;        /* block_cache stage with the longest KV history */
  /* Where the layers' inputs are (-1: the net has none), from the convention:
   * llm_convert: block (hidden, pos, mask), block_cache (hidden, pos, mask, K, V);
   * WizardCoder: block (hidden, mask), block_cache (hidden, past_cache, mask). */
  int block_pos, block_mask;
  int cache_pos, cache_mask, cache_k, cache_v; /* cache_v -1: one combined K|V cache */
} shim_nets;

/* Device buffers and host scratch: sized at open, contents are per call. */
typedef struct {
  int direct_io;          /* io_alone: chain and write KV by reference */
  bmapi_mem_t *kv_k, *kv_v; /* KV cache per layer (L rows each) */
  int own_kv;             /* we allocated kv_k/kv_v */
  size_t kv_row_bytes;    /* bytes of one token's K (or V) in one layer */
  size_t hidden_bytes;    /* bytes of one token's hidden state */
  int esize;              /* bytes of one float element (2) */
  unsigned short *mask_buf; /* host scratch for masks (room for f32 entries) */
  size_t mask_buf_elems;
  float mask_value;       /* what hides a key: the convention's, else -10000 */
  bmapi_mem_t slide_mask; /* sliding layout: our decode mask, passed by reference */
  int32_t *ids_buf;       /* host scratch for ids / positions */
  int ids_cap;            /* its length: the longest prefill or embedding input */
  /* A pinned shared prefix (tpc_pin_prefix): a device copy of its KV rows,
   * layer i's K at [2i * n rows], V at [(2i + 1) * n rows]. */
  bmapi_mem_t prefix_mem;
  /* Basic addressing: our copy of a verified chunk's last hidden rows (the
   * heads' launches may reuse the shared IO they sit in); allocated on first use. */
  bmapi_mem_t chunk_hidden;
} shim_bufs;

/* What the KV cache holds now. */
typedef struct {
  int position;           /* tokens in the KV cache */
  int slide_rows;         /* sliding layout: rows held right-aligned (>= position after a rewind) */
  int slide_mask_rows;    /* the rows slide_mask shows (-1: unknown) */
  int mask_zeros;         /* decode mask entries [0, mask_zeros) are 0; -1 unknown */
  int token_on_device;    /* the last chosen token already sits in embedding_cache's input */
  int last_token;
  int32_t *tokens;        /* the ids in the KV cache, by position (kv_len) */
  int prefix_len;         /* the pinned prefix's tokens */
  int32_t *prefix_tokens;
} shim_kv;

/* Sampler settings and host scratch. */
typedef struct {
  tpc_sampling sampling;
  unsigned long long rng; /* splitmix64 state */
  float *probs;           /* host scratch for sampling (vocab) */
  int *order;
  float *logits;          /* host copy of the last logits (lm_head kind 2) */
  void *logits_raw;
  /* Greedy choice after a logits lm_head: greedy_head on the device or the
   * argmax on the host, whichever measured cheaper (TPC_HEAD_*). */
  int head_path;
  double head_us[3];      /* [TPC_HEAD_DEVICE], [TPC_HEAD_HOST]: measured, 0 = not yet */
} shim_sampler;

/* Timing of the current call and measured costs. */
typedef struct {
  tpc_timing timing;
  double call_start, device_us;
  double cost_decode_us, cost_prefill_us[8];
  int append_policy; /* TPC_APPEND_* */
} shim_stats;

/* Multi-device (num_device > 1): per-net layout plans, KV shares. */
typedef struct {
  int on;
  tpc_net_plan *plans;          /* [num_nets], in net_names order */
  const tpc_net_plan *p_emb, *p_embc, *p_lm;
  const tpc_net_plan **p_block, **p_cache; /* [num_layers] */
  bmapi_mem_t *kv_k, *kv_v;     /* [layer * num_device + device] */
  int own_kv;
  unsigned char *host;          /* host bounce buffer for cross-device copies */
  size_t host_bytes;
} shim_md;

/* LLM-TPU's share-cache layout (share.c; all zero for other bmodels). */
typedef struct {
  int on;
  net_t embed;              /* embedding_unshare */
  net_t *block;             /* block_unshare_N [num_layers] */
  int share_rows;           /* SHARE: block_N's rows, the unshared nets' history rows */
  int unshare_rows;         /* UNSHARE: block_unshare_N's rows */
  int shared;               /* tokens of the shared part in the cache (rows [0, shared)) */
  int32_t *host;            /* host scratch: UNSHARE ids, then UNSHARE positions */
} shim_share;

/* Vision (all zero for text-only bmodels). */
typedef struct {
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
} shim_vision;

struct tpc_model {
  char err[ERR_LEN];
  /* the runtime and its devices */
  bm_handle_t handles[MAX_DEVICES];
  int devids[MAX_DEVICES];
  int num_handles;
  int borrowed_handles;   /* handles belong to a family: do not free them */
  int shared_neuron;      /* loaded into caller memory: all nets share one activation
                           * area, so nothing may stay in a net's buffers between launches */
  void *rt;
  const char **net_names; /* from the runtime; we free the array */
  int num_nets;

  tpc_desc d;             /* description (what Python sees) */
  tpc_roles roles;        /* which net plays which role (roles.c) */
  shim_nets net;          /* nets by role */
  shim_bufs buf;          /* device buffers, host scratch */
  shim_kv kv;             /* KV state */
  shim_sampler smp;       /* sampler */
  shim_stats stats;       /* timing */
  shim_md md;             /* multi-device */
  shim_vision vis;        /* vision */
  shim_share share;       /* share-cache layout */
};

/* runtime.c */
SHIM void set_err(char *err, int errlen, const char *fmt, ...);
SHIM double now_us(void);
SHIM int check_devid(int devid, char *err, int errlen);
SHIM void fill_stat(bm_handle_t h, int devid, tpc_device_stat *out);

/* describe.c */
SHIM int fail(tpc_model *m, int code, const char *fmt, ...);
SHIM net_t find_net(tpc_model *m, const char *name);
SHIM int is_float_dtype(int dt);
SHIM int dtype_size(int dt);
SHIM size_t shape_count(const bmapi_shape_t *s, int from);
SHIM int per_device(net_t n, int count, int num_device);
SHIM int describe_nets(tpc_model *m);
SHIM void net_desc_of(net_t n, int stage, tpc_tensor_info *ins, tpc_tensor_info *outs, tpc_net_desc *nd);

/* roles.c */
SHIM const char *convention_layer_fmt(int id, int decode);

/* iocheck.c */
SHIM int check_io(tpc_model *m);
SHIM int need_io(tpc_model *m, net_t n, int stage, int is_out, int k, int dtype, size_t bytes, const char *what);

/* device.c */
#define TIMED(expr)                      \
  ({                                     \
    double t0_ = now_us();               \
    __typeof__(expr) r_ = (expr);        \
    m->stats.device_us += now_us() - t0_; \
    r_;                                  \
  })
SHIM bm_handle_t H(tpc_model *m);
SHIM bmapi_mem_t mem_at(bmapi_mem_t base, size_t offset, size_t size);
SHIM bmapi_mem_t kv_view(tpc_model *m, bmapi_mem_t cache, int row);
SHIM int upload(tpc_model *m, bmapi_mem_t dst, size_t offset, const void *src, size_t size, const char *what);
SHIM int download(tpc_model *m, void *dst, bmapi_mem_t src, size_t offset, size_t size, const char *what);
SHIM int copy_d2d(tpc_model *m, bmapi_mem_t dst, size_t dst_off, bmapi_mem_t src, size_t src_off, size_t size,
                  const char *what);
SHIM int zero(tpc_model *m, bmapi_mem_t mem, const char *what);
SHIM bmapi_tensor_t tensor(bmapi_mem_t mem, int dtype, const bmapi_shape_t *shape);
SHIM void own_tensors(net_t n, int stage, bmapi_tensor_t *in, bmapi_tensor_t *out);
SHIM int launch(tpc_model *m, net_t n, bmapi_tensor_t *in, bmapi_tensor_t *out);
SHIM int sync_device(tpc_model *m);
SHIM int pick_stage(net_t n, int len);
SHIM void set_len(bmapi_shape_t *s, int len);
SHIM void begin_call(tpc_model *m);
SHIM void end_call(tpc_model *m);
SHIM int dev_alloc(tpc_model *m, bmapi_mem_t *mem, size_t bytes, const char *what);

/* masks.c */
SHIM unsigned short mask_min(int dtype);
SHIM int ensure_mask_buf(tpc_model *m, size_t elems);
SHIM void build_prefill_mask(unsigned short *buf, int rows, int cols, int n, unsigned short neg);
SHIM int update_decode_mask(tpc_model *m, bmapi_mem_t mask_mem, int p);
SHIM float half_to_float(unsigned short h, int dtype);
SHIM unsigned short half_one(int dtype);
SHIM unsigned short float_to_half(float f, int dtype);
SHIM void build_prefill_mask_as(tpc_model *m, int dtype, int rows, int cols, int n);
SHIM int update_sliding_mask(tpc_model *m, int p);

/* kv.c */
SHIM int alloc_state(tpc_model *m);
SHIM int alloc_host_scratch(tpc_model *m, int all_inputs);
SHIM size_t kv_row_offset(const tpc_model *m, int position);
SHIM int kv_keep_prefill(tpc_model *m, int layer, const bmapi_tensor_t *out, int n);
SHIM int kv_keep_decode(tpc_model *m, int layer, const bmapi_tensor_t *out, int p);
SHIM int kv_align(tpc_model *m, int p);

/* heads.c */
SHIM int sampling_active(const tpc_model *m);
SHIM int host_sample(tpc_model *m, float *logits, int end);
SHIM int run_head(tpc_model *m, bmapi_mem_t hidden_row, int end, int *tok);

/* step.c */
SHIM int decode_impl(tpc_model *m, int token, int need_head, int *next_token);
SHIM int prefill_impl(tpc_model *m, const int *ids, int n, int need_head, int *next_token);

/* share.c */
SHIM int kv_row(const tpc_model *m, int p);
SHIM int describe_share(tpc_model *m);
SHIM int check_share_io(tpc_model *m);
SHIM void free_share(tpc_model *m);
SHIM int share_decode_mask(tpc_model *m, bmapi_mem_t mask_mem, int p);
SHIM int share_prefill(tpc_model *m, const int *ids, int n, int reuse, int *next_token);
SHIM int share_pin(tpc_model *m, const int *ids, int n);
SHIM int block_kv_layers(tpc_model *m, const int *chunk, int start, int c, bmapi_mem_t *hidden_out);

/* prefix.c */
SHIM int restore_prefix(tpc_model *m, int rows);

/* vision.c */
SHIM int describe_vision(tpc_model *m);
SHIM int alloc_cross_kv(tpc_model *m, int layer);
SHIM int alloc_vision(tpc_model *m);
SHIM void free_vision(tpc_model *m);
SHIM int image_checks(tpc_model *m, int n, int *lcp, int pinned);
SHIM int upload_cross_masks(tpc_model *m, int n, int rows);
SHIM int cross_prefill_layer(tpc_model *m, int layer, int rows, bmapi_mem_t *hidden);
SHIM int cross_decode_layer(tpc_model *m, int layer, bmapi_mem_t *hidden);

/* load.c */
SHIM int open_model(const char *bmodel_path, const int *devids, int num_devids, bm_handle_t handle,
                    bmapi_mem_info_t *mem, tpc_model **out, char *err, int errlen);
SHIM int file_device_num(const char *path, int *out, char *err, int errlen);

/* md_exec.c */
SHIM int md_prepare(tpc_model *m);
SHIM int md_prefill(tpc_model *m, const int *ids, int n, int need_head, int *next_token);
SHIM int md_decode(tpc_model *m, int token, int need_head, int *next_token);
SHIM int md_reset(tpc_model *m);
SHIM void md_free(tpc_model *m);

#endif
