/*
 * tpuchat_shim.h - a small LLM runner over libsophon's runtime.
 *
 * The shim loads one bmodel that follows the LLM-TPU / llm_convert network
 * convention (embedding, block_N, block_cache_N, lm_head, optional heads),
 * keeps the KV cache on the device and turns token ids into the next token
 * id.  It knows nothing of text or chat.  Everything crossing this API is an
 * int, a pointer or a flat array, so cffi's ABI never sees a runtime struct.
 *
 * Every function that can fail returns 0 on success or a negative TPC_E_*
 * code; tpc_error() then holds a one-line explanation.
 */
#ifndef TPUCHAT_SHIM_H
#define TPUCHAT_SHIM_H
/* cdef-begin */

#define TPC_OK 0
#define TPC_E_ARG -1      /* bad argument from the caller */
#define TPC_E_LIB -2      /* runtime library missing or incomplete */
#define TPC_E_DEVICE -3   /* device cannot be opened / does not exist */
#define TPC_E_LOAD -4     /* bmodel cannot be loaded */
#define TPC_E_MODEL -5    /* bmodel loaded but is not a usable LLM bmodel */
#define TPC_E_RUNTIME -6  /* a runtime call failed during inference */
#define TPC_E_FULL -7     /* the KV cache is full (position reached kv_len) */
#define TPC_E_NOMEM -8    /* host or device allocation failed */
#define TPC_E_TOO_LONG -9 /* the prompt does not fit the prefill / KV length */

/* What a bmodel is, read from its nets. */
typedef struct {
  int num_nets;
  int num_layers;       /* number of block_N nets */
  int seq_len;          /* S: longest prefill (largest block_0 stage) */
  int kv_len;           /* L: KV history rows of block_cache_N */
  int hidden_size;
  int kv_heads;
  int head_dim;
  int float_dtype;      /* runtime dtype code of hidden states: 1 f16, 8 bf16 */
  int mask_dtype;       /* dtype code of the attention masks */
  int addr_mode;        /* 1 = io_alone (KV cache lives in block_cache IO) */
  int is_dynamic;       /* prefill nets take the real length */
  int prefill_has_mask; /* static prefill takes an explicit mask input */
  int num_stages;       /* stages of block_0 */
  int stage_seq_len[8]; /* S of each stage */
  int num_device;       /* devices the bmodel was compiled for */
  int lm_head_kind;     /* 0 none, 1 top-1 token on device, 2 logits */
  int logits_dtype;     /* dtype code of lm_head logits (kind 2) */
  int vocab_size;       /* logits width, 0 when lm_head is top-1 */
  int has_embedding_cache;
  int has_greedy_head;
  int has_sample_head;          /* sample_head */
  int has_penalty_sample_head;  /* penalty_sample_head (older builds) */
  int has_block_kv;             /* block_kv_N (--use_history_kv) */
  int new_net_info;             /* runtime exposes addr_mode / devices */
  long long kv_cache_bytes;     /* device bytes of the whole KV cache */
  char convention[80];          /* the bmodel convention (roles.c), for `tpuchat info` */
  int decode_embed;             /* TPC_EMBED_DECODE_*: how decode tokens are embedded */
  int kv_layout;                /* TPC_KV_*: how the KV cache holds its rows */
  int learned_positions;        /* positions go to the embedding (input_pos), not the layers */
} tpc_desc;

/* One tensor of one net (for inspection). */
typedef struct {
  const char *name;
  int dtype;
  int num_dims;
  int dims[8];
  int device;           /* device index the tensor lives on (0 if unknown) */
} tpc_tensor_info;

typedef struct {
  const char *name;
  int is_dynamic;
  int num_inputs;
  int num_outputs;
  int num_stages;
  int addr_mode;
} tpc_net_info;

/* Device memory in MB, from the driver. */
typedef struct {
  int devid;
  int mem_total_mb;
  int mem_used_mb;
  int tpu_util;
} tpc_device_stat;

/* Timings of the last prefill/decode call, in microseconds. */
typedef struct {
  double total_us;     /* wall time of the whole call */
  double device_us;    /* time inside runtime calls: launches, syncs, copies */
  double host_us;      /* total - device: the shim's own work */
  int launches;        /* runtime launches in the call */
  int copies;          /* host<->device and device<->device copies */
  int reused;          /* prefill_reuse: cached rows kept */
} tpc_timing;

typedef struct tpc_model tpc_model;

/* Runtime library (process-wide). lib_dir holds libbmlib/libbmrt. */
int tpc_runtime_load(const char *lib_dir, char *err, int errlen);
int tpc_device_count(int *count, char *err, int errlen);
int tpc_device_stat_of(int devid, tpc_device_stat *out, char *err, int errlen);

/* Model lifetime.  On failure *out is NULL and err holds the reason. */
int tpc_open(const char *bmodel_path, const int *devids, int num_devids,
             tpc_model **out, char *err, int errlen);
void tpc_close(tpc_model *m);
const char *tpc_error(const tpc_model *m);

/* Description and inspection. */
int tpc_describe(const tpc_model *m, tpc_desc *out);
int tpc_net_info_at(const tpc_model *m, int index, tpc_net_info *out);
int tpc_net_tensor(const tpc_model *m, int net_index, int is_output, int index,
                   int stage, tpc_tensor_info *out);
int tpc_device_stat_at(const tpc_model *m, int index, tpc_device_stat *out);

/* Inference.  prefill starts a fresh sequence at position 0 with n ids
 * (1 <= n <= seq_len) and returns the next token; decode feeds one token at
 * the current position and returns the next one.  Greedy selection happens
 * on the device when the bmodel can (top-1 lm_head or greedy_head), on the
 * host from logits otherwise. */
int tpc_prefill(tpc_model *m, const int *ids, int n, int *next_token);
/* Like prefill, but keeps the cached rows of the longest common prefix of
 * ids and the tokens already in the cache, and computes only the rest:
 * through block_kv nets when the bmodel has them, else by decode steps when
 * that is cheaper than a fresh prefill (or the only way: ids longer than
 * seq_len).  n may exceed seq_len up to kv_len when the rest can be
 * appended.  tpc_last_timing().reused tells how many rows were kept. */
int tpc_prefill_reuse(tpc_model *m, const int *ids, int n, int *next_token);
/* How prefill_reuse extends a cached prefix when the bmodel has no
 * block_kv nets.  BY_COST (the default) appends by decode steps only when the
 * measured costs say that beats a fresh prefill; ALWAYS keeps the cached rows
 * whenever it can (deterministic: tests, callers that know their costs). */
#define TPC_APPEND_BY_COST 0
#define TPC_APPEND_ALWAYS 1
int tpc_set_append_policy(tpc_model *m, int policy);
/* How a greedy token is chosen when lm_head returns logits and a
 * greedy_head exists: AUTO measures both ways once (the host argmax first:
 * it costs milliseconds anywhere, while a device head over a large
 * vocabulary takes ~100 s per call on the simulator) and then keeps the
 * cheaper; DEVICE and HOST force one.  Same tokens either way.  Known costs
 * (from an earlier run of this bmodel on this runtime; 0 = unknown) skip the
 * measuring. */
#define TPC_HEAD_AUTO 0
#define TPC_HEAD_DEVICE 1
#define TPC_HEAD_HOST 2
int tpc_set_head_path(tpc_model *m, int path, double device_us, double host_us);
/* The measured costs (0 = not measured) and the path the next greedy token takes. */
int tpc_head_costs(const tpc_model *m, double *device_us, double *host_us, int *next_path);
int tpc_decode(tpc_model *m, int token, int *next_token);
/* Check several tokens in one pass (the verifier of prompt-lookup
 * decoding): feed ids[0, c) at the current position as one block_kv chunk
 * against the cached rows and write the model's greedy pick after each row
 * to picks[0, c) (picks[0] follows ids[0], as tpc_decode(ids[0]) would
 * return); the position advances by c.  The caller keeps the rows it wants
 * with tpc_rewind: rows at or past the position are never seen again (the
 * next step overwrites them).  Needs block_kv nets, greedy selection,
 * 1 <= c <= tpc_chunk_capacity() and position + c <= kv_len.  The head runs
 * once per row: one lm_head launch per row on top-1 builds (two with a
 * greedy_head; logits builds take the argmax on the host). */
int tpc_chunk_picks(tpc_model *m, const int *ids, int c, int *picks);
/* The longest chunk tpc_chunk_picks takes; 0 when the bmodel has no block_kv nets. */
int tpc_chunk_capacity(const tpc_model *m);
int tpc_reset(tpc_model *m);
/* Forget cached rows from `position` on (keeps the rows before it). */
int tpc_rewind(tpc_model *m, int position);
int tpc_position(const tpc_model *m);
int tpc_last_timing(const tpc_model *m, tpc_timing *out);

/* Logits of the last step (lm_head kind 2 only): copies vocab_size floats. */
int tpc_last_logits(tpc_model *m, float *out, int n);

/* How the next tokens are chosen.  Greedy unless sample is set; sampling
 * needs logits (lm_head kind 2): on the device through sample_head /
 * penalty_sample_head when present (at most 50 candidates, top_p keeps at
 * least 5), else on the host.  temperature <= 1e-5 means greedy. */
typedef struct {
  int sample;
  float temperature;
  float top_p;              /* (0, 1] */
  int top_k;                /* 0: no cut (device: 50) */
  float repetition_penalty; /* 1: off */
  int penalty_window;       /* recent tokens the penalty sees; 0: all */
  unsigned long long seed;
  int on_host;              /* sample on the host even if a sample head exists */
} tpc_sampling;
int tpc_set_sampling(tpc_model *m, const tpc_sampling *s);

/* Shared prefix: compute the KV rows of ids[0, n) (keeping what is already
 * cached) and keep a device copy of them, so any later prompt that starts
 * with some of these ids gets those rows back by device copies instead of
 * recomputing them, whatever ran in between.  Replaces an earlier pin;
 * n = 0 drops it.  Leaves the cache holding the prefix. */
int tpc_pin_prefix(tpc_model *m, const int *ids, int n);
int tpc_pinned_prefix(const tpc_model *m);

/* Multi-device layout (bmodels compiled with --num_device N).  The runtime
 * shows each net as one list of inputs/outputs over all devices, each with
 * the device it lives on.  tpc_plan_net works out, from such a description
 * alone (no runtime needed), which input and output of which device plays
 * which part: host data (ids, positions, masks) is copied to every device,
 * each device holds its own share of the KV cache, and inputs with no part
 * ("passthrough": the compiler's own cross-device tensors) keep the
 * runtime's buffers, fed by the same device's passthrough output of the same
 * shape when there is one. */
#define TPC_MAX_IO 64
#define TPC_MAX_DEV 8
#define TPC_NET_OTHER 0
#define TPC_NET_EMBEDDING 1
#define TPC_NET_BLOCK 2
#define TPC_NET_BLOCK_CACHE 3
#define TPC_NET_BLOCK_KV 4
#define TPC_NET_LM_HEAD 5
#define TPC_ROLE_NONE 0     /* passthrough */
#define TPC_ROLE_IDS 1
#define TPC_ROLE_HIDDEN 2   /* hidden states in/out; lm_head: its token/logits out */
#define TPC_ROLE_POS 3
#define TPC_ROLE_MASK 4
#define TPC_ROLE_HIST_K 5
#define TPC_ROLE_HIST_V 6
#define TPC_ROLE_K 7        /* new K rows out */
#define TPC_ROLE_V 8
#define TPC_NUM_ROLES 9

typedef struct {
  const char *name;
  int num_inputs;
  int num_outputs;
  const tpc_tensor_info *inputs;   /* stage 0 */
  const tpc_tensor_info *outputs;
} tpc_net_desc;

typedef struct {
  int kind;                          /* TPC_NET_* */
  int num_device;
  int num_inputs;
  int num_outputs;
  int in_role[TPC_MAX_IO];
  int in_device[TPC_MAX_IO];
  int in_tie[TPC_MAX_IO];            /* passthrough input fed by this output index, -1: own buffer */
  int out_role[TPC_MAX_IO];
  int out_device[TPC_MAX_IO];
  int role_input[TPC_NUM_ROLES][TPC_MAX_DEV];   /* input index per role and device, -1 */
  int role_output[TPC_NUM_ROLES][TPC_MAX_DEV];  /* output index per role and device, -1 */
  int hidden_out_devices;            /* bit d: device d produces the hidden output */
  int kv_heads;                      /* KV heads held by each device (0: no KV) */
  int kv_heads_total;
  int num_passthrough_in;
  int num_tied;
} tpc_net_plan;

int tpc_plan_net(const tpc_net_desc *net, int num_device, tpc_net_plan *out, char *err, int errlen);
/* The plan the open model uses for net `name` (multi-device models only). */
int tpc_net_plan_of(const tpc_model *m, const char *name, tpc_net_plan *out);

/* Model families: bmodels compiled from the same weights with different
 * lengths share one weight area on the device.  The first member's load
 * allocates it (as large as the largest member needs); each member gets its
 * own instruction, activation and IO memory, and switching frees and
 * reallocates only those (bmrt_get_bmodel_info + bmrt_load_bmodel_with_mem).
 * The runtime copies the member's weights into the area on every load.
 * Each shared load is checked: the runtime must say where it put every
 * net's weights (bmrt_get_coeff_info) and no two nets with different
 * weights may overlap.  TPU-MLIR 1.30.2's runtime (the simulator) fails this:
 * its load_bmodel_net hands every net the whole area, so all their weights
 * land at its start.  A failed check gives the area back and the family
 * falls back to plain loads of each member (shared = 0, share_note says
 * why): still one member, so one copy of the weights, on the device at a
 * time.  The caller checks first that the members hold the same weights
 * (the shim cannot: only sizes are visible here).  One member is loaded at
 * a time; tpc_family_model() is it, driven with the tpc_* calls above, and
 * valid until the next switch. */
/* Bmodel conventions (roles.c holds the table).  tpc_match_roles is pure:
 * a description of every net in, which net plays which role out. */
#define TPC_CONV_NONE 0
#define TPC_CONV_LLM_CONVERT 1    /* TPU-MLIR llm_convert (and sophon-demo / LLM-TPU with its names) */
#define TPC_CONV_QWEN_TPU 2       /* sophgo/Qwen-TPU: qwen_block_N, one 2-stage embedding */
#define TPC_CONV_WIZARDCODER 3    /* LLM-TPU WizardCoder: learned positions, one sliding past_cache */
#define TPC_CONV_SHARE_CACHE 4    /* LLM-TPU share-cache: embedding_unshare / block_unshare_N */
#define TPC_EMBED_DECODE_NET 0     /* decode tokens go through embedding_cache */
#define TPC_EMBED_DECODE_STAGE 1   /* through the embedding's 1-row stage */
#define TPC_EMBED_DECODE_PREFILL 2 /* through the embedding's prefill stage, token at row 0 */
#define TPC_KV_ROWS 0              /* K and V apart, position p at row p; decode nets return one new row */
#define TPC_KV_SLIDING 1           /* one K|V row per token, right-aligned in the window; decode nets return
                                    * the window plus the new row, which slides up one row (WizardCoder) */
#define TPC_SAMPLE_LOGITS 0        /* sample head inputs, by role */
#define TPC_SAMPLE_IDS 1
#define TPC_SAMPLE_PENALTY 2
#define TPC_SAMPLE_TEMPERATURE 3
#define TPC_SAMPLE_TOP_K 4
#define TPC_SAMPLE_TOP_P 5

typedef struct {
  tpc_net_desc io;          /* stage 0's inputs and outputs */
  int num_stages;
  int stage_rows[8];        /* dims[1] of input 0 in each stage */
  int is_dynamic;
} tpc_net_summary;

typedef struct {
  int convention;           /* TPC_CONV_* */
  char name[80];            /* what `tpuchat info` prints */
  int num_layers;
  int num_device;
  int embedding, embedding_cache, lm_head, greedy_head, sample_head; /* net indices, -1: none */
  int decode_embed;         /* TPC_EMBED_DECODE_* */
  int decode_embed_stage;   /* the embedding stage decode tokens go through */
  int sample_in[6];         /* sample head input per TPC_SAMPLE_* role, -1: the net has none */
  int kv_layout;            /* TPC_KV_* */
  int learned_positions;    /* the embedding takes input_pos; the layers take no positions */
  float mask_value;         /* what hides a key (0: -10000, the converted nets' value) */
} tpc_roles;

int tpc_match_roles(const tpc_net_summary *nets, int num_nets, tpc_roles *out, char *err, int errlen);
int tpc_roles_of(const tpc_model *m, tpc_roles *out);

typedef struct tpc_family tpc_family;
typedef struct {
  int num_members;
  int active;                /* loaded member, -1 when none */
  int shared;                /* 1: one weight area; 0: plain loads (old runtime) */
  long long weight_bytes;    /* size of the shared weight area (0 when not shared) */
  double last_switch_us;     /* wall time of the last load of a member */
  char share_note[200];      /* why the weights are not shared when asked to be ("" otherwise) */
} tpc_family_info;
/* Device memory one bmodel needs, from the runtime (bmrt_get_bmodel_info). */
typedef struct {
  long long weight_bytes;    /* coeff */
  long long instruction_bytes;
  long long neuron_bytes;
  long long io_bytes;
} tpc_bmodel_memory;
int tpc_bmodel_memory_of(const char *bmodel_path, tpc_bmodel_memory *out, char *err, int errlen);
int tpc_family_open(const char *const *paths, int num_paths, const int *devids, int num_devids,
                    int first, int share_weights, tpc_family **out, char *err, int errlen);
int tpc_family_switch(tpc_family *f, int index);
tpc_model *tpc_family_model(tpc_family *f);
int tpc_family_get_info(const tpc_family *f, tpc_family_info *out);
const char *tpc_family_error(const tpc_family *f);
/* The placement rule the shared loads are checked against (pure; exposed for
 * tests): every net's weight range [lo, hi) inside the area, and ranges that
 * overlap identical, with the same tensor signature (one copy of weights that
 * are the same).  0 when the placement is sound, else TPC_E_LOAD and why. */
int tpc_check_weight_ranges(const unsigned long long *lo, const unsigned long long *hi,
                            const unsigned long long *sig, const char *const *names, int n,
                            unsigned long long area_lo, unsigned long long area_hi, char *why, int whylen);
void tpc_family_close(tpc_family *f);

/* Vision (Llama-3.2-Vision style bmodels).  A `vit` net turns one image
 * (f32 pixel_values [tiles, 3, size, size], an aspect-ratio id and a mask of
 * used tiles) into image states [tiles, patches, hidden]; cross-attention
 * layers are block_N / block_cache_N whose inputs take those states
 * (prefill: and output their K/V) or that K/V as history (decode).  Which
 * layers they are is read from the nets' inputs. */
typedef struct {
  int has_vision;       /* a vit net and at least one cross-attention layer */
  int tiles;            /* tiles the vit takes (pixel_values dim 0) */
  int channels;
  int image_size;       /* tile edge in pixels */
  int pixel_dtype;      /* dtype code of pixel_values */
  int patches;          /* image states per tile */
  int num_cross_layers;
  int cross_layers[64]; /* their layer indices (the first 64) */
  long long image_kv_bytes; /* device bytes of the image K/V of all cross layers */
} tpc_vision_desc;
int tpc_describe_vision(const tpc_model *m, tpc_vision_desc *out);

/* Run the vit on one image and keep its states on the device, replacing the
 * previous image; the cached sequence is forgotten (its rows saw the old
 * image).  aspect_ratio_mask has `tiles` entries, 1 per used tile.
 * tpc_last_timing() then tells the vit's time. */
int tpc_set_image(tpc_model *m, const float *pixel_values, int tiles, int size,
                  int aspect_ratio_id, const int *aspect_ratio_mask);
/* Where the image token sits in the ids of the following prefills: rows from
 * image_pos on attend to the image's used tiles (earlier rows to no tile);
 * -1 = a text-only sequence, whose prefill and decode skip the
 * cross-attention layers.  prefill_reuse keeps cached rows only when they
 * were computed with the same image and an image_pos that does not change
 * them. */
int tpc_set_image_pos(tpc_model *m, int image_pos);
/* The held image states as floats (tiles * patches * hidden). */
int tpc_image_states(tpc_model *m, float *out, int n);

/* cdef-end */
#endif
