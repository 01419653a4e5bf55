/*
 * bmrt_api.h - tpuchat's own declarations of the small part of libsophon
 * (libbmlib + libbmrt) that the shim calls.
 *
 * Layouts are LP64 (x86_64, aarch64) for libsophon >= 0.5.1 and the
 * TPU-MLIR simulator build.  Functions are not linked: the shim resolves
 * them at run time (dlopen + dlsym), so only pointer types are declared.
 * Every call that passes a struct by value lives in C, never in cffi.
 */
#ifndef TPUCHAT_BMRT_API_H
#define TPUCHAT_BMRT_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bm_context *bm_handle_t;
typedef int bm_status_t; /* 0 = success */

/* Data type codes used in tensors and net descriptions. */
enum {
  BMAPI_F32 = 0, BMAPI_F16 = 1, BMAPI_INT8 = 2, BMAPI_UINT8 = 3,
  BMAPI_INT16 = 4, BMAPI_UINT16 = 5, BMAPI_INT32 = 6, BMAPI_UINT32 = 7,
  BMAPI_BF16 = 8
};

#define BMAPI_MAX_DIMS 8
typedef struct {
  int num_dims;
  int dims[BMAPI_MAX_DIMS];
} bmapi_shape_t; /* 36 bytes */

/* Device memory descriptor.  The runtime declares a union (device address
 * or system pointer) followed by a 32-bit flags bit-field and the size; we
 * only ever use the device view. */
typedef struct {
  unsigned long long device_addr;
  unsigned int reserved;
  int dmabuf_fd;
  unsigned int flags;
  unsigned int size;
} bmapi_mem_t; /* 24 bytes, 8-aligned */

typedef struct {
  int dtype;
  bmapi_shape_t shape;
  bmapi_mem_t device_mem;
  int st_mode;
} bmapi_tensor_t; /* 72 bytes */

typedef struct {
  bmapi_shape_t *input_shapes;
  bmapi_shape_t *output_shapes;
  bmapi_mem_t *input_mems;
  bmapi_mem_t *output_mems;
} bmapi_stage_t;

typedef struct {
  const char *name;
  bool is_dynamic;
  int input_num;
  const char **input_names;
  int *input_dtypes;
  float *input_scales;
  int output_num;
  const char **output_names;
  int *output_dtypes;
  float *output_scales;
  int stage_num;
  bmapi_stage_t *stages;
  size_t *max_input_bytes;
  size_t *max_output_bytes;
  int *input_zero_point;
  int *output_zero_point;
  /* Fields below exist from libsophon 0.5.1 on (detected by bmrt_create_ex). */
  int *input_loc_devices;
  int *output_loc_devices;
  int core_num;
  int32_t addr_mode; /* 1 = io_alone: each net owns its IO buffers */
} bmapi_net_info_t; /* 144 bytes */

/* Device statistics from bm_get_stat (memory in MB). */
typedef struct {
  unsigned int mem_total, mem_avail, mem_used;
} bmapi_heap_stat_t;
typedef struct {
  int mem_total;
  int mem_used;
  int tpu_util;
  int heap_num;
  bmapi_heap_stat_t heap_stat[4];
} bmapi_dev_stat_t;

/* Device memory with a 64-bit size (bm_device_mem_u64_t): weight areas of
 * large models exceed 4 GB. */
typedef struct {
  unsigned long long device_addr;
  unsigned int reserved;
  int dmabuf_fd;
  unsigned int flags;
  unsigned long long size;
} bmapi_mem64_t; /* 32 bytes */

/* One device memory region of a bmodel, as bmrt_get_bmodel_info reports it
 * and bmrt_load_bmodel_with_mem takes it (the runtime's memory_t). */
typedef struct {
  int64_t addr;       /* device address, -1 when not given */
  uint64_t size;      /* bytes (128-aligned) */
  int type;           /* 0 device memory */
  int number;         /* copies (per core); 1 */
  char reserved[124];
} bmapi_region_t; /* 152 bytes */

/* All regions of a bmodel (the runtime's mem_info_t). */
typedef struct {
  bmapi_region_t instruction;          /* tiu/hau commands, dynamic IR */
  bmapi_region_t variable_instruction; /* gdma/sdma commands */
  bmapi_region_t neuron;               /* activations, middle buffers */
  bmapi_region_t coeff;                /* the weights */
  bmapi_region_t io;                   /* io_alone input/output buffers */
  bmapi_region_t reserved[4];
} bmapi_mem_info_t; /* 1368 bytes */

/* libbmlib */
typedef bm_status_t (*bm_dev_getcount_fn)(int *count);
typedef bm_status_t (*bm_dev_request_fn)(bm_handle_t *handle, int devid);
typedef void (*bm_dev_free_fn)(bm_handle_t handle);
typedef bm_status_t (*bm_get_stat_fn)(bm_handle_t handle, bmapi_dev_stat_t *stat);
typedef bm_status_t (*bm_thread_sync_fn)(bm_handle_t handle);
typedef bm_status_t (*bm_malloc_device_byte_fn)(bm_handle_t handle, bmapi_mem_t *mem, unsigned int size);
typedef void (*bm_free_device_fn)(bm_handle_t handle, bmapi_mem_t mem);
typedef bm_status_t (*bm_memcpy_s2d_partial_offset_fn)(bm_handle_t handle, bmapi_mem_t dst, void *src,
                                                      unsigned int size, unsigned int offset);
typedef bm_status_t (*bm_memcpy_d2s_partial_offset_fn)(bm_handle_t handle, void *dst, bmapi_mem_t src,
                                                      unsigned int size, unsigned int offset);
typedef bm_status_t (*bm_memcpy_d2d_byte_fn)(bm_handle_t handle, bmapi_mem_t dst, size_t dst_offset,
                                            bmapi_mem_t src, size_t src_offset, size_t size);
typedef bm_status_t (*bm_memset_device_fn)(bm_handle_t handle, const int value, bmapi_mem_t mem);
typedef bm_status_t (*bm_malloc_device_byte_u64_fn)(bm_handle_t handle, bmapi_mem64_t *mem,
                                                    unsigned long long size);
typedef void (*bm_free_device_u64_fn)(bm_handle_t handle, bmapi_mem64_t mem);

/* libbmrt */
typedef void *(*bmrt_create_fn)(bm_handle_t handle);
typedef void *(*bmrt_create_ex_fn)(bm_handle_t *handles, int num_handles);
typedef void (*bmrt_destroy_fn)(void *rt);
typedef bool (*bmrt_load_bmodel_fn)(void *rt, const char *path);
typedef int (*bmrt_get_network_number_fn)(void *rt);
typedef void (*bmrt_get_network_names_fn)(void *rt, const char ***names);
typedef const bmapi_net_info_t *(*bmrt_get_network_info_fn)(void *rt, const char *name);
/* Weight sharing (absent from old libsophon): the memory a bmodel needs, and
 * a load into memory the caller provides. */
typedef bool (*bmrt_get_bmodel_info_fn)(const char *path, bmapi_mem_info_t *info);
typedef bool (*bmrt_load_bmodel_with_mem_fn)(void *rt, const char *path, bmapi_mem_info_t *info);

/* Where the runtime put one weight tensor of a loaded net (newer runtimes'
 * bm_coeff_info_t: the tensor's name, then its device memory). */
typedef struct {
  char path[256];
  bmapi_mem_t device_mem;
} bmapi_coeff_info_t; /* 280 bytes */
typedef const bmapi_coeff_info_t *(*bmrt_get_coeff_info_fn)(void *rt, const char *net, int stage, int *num);
typedef bool (*bmrt_launch_tensor_ex_fn)(void *rt, const char *net, const bmapi_tensor_t *inputs, int num_in,
                                         bmapi_tensor_t *outputs, int num_out, bool user_mem, bool user_stmode);

#endif
