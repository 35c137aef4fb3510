/* TMA descriptors of the weight matrices (cuTensorMapEncodeTiled, reached through the runtime's
 * driver entry point so that nothing links the driver library): each 16-bit (OC, IC) row-major
 * matrix in boxes of one slab, 16 rows x 256 columns, zeros outside it. The fused decode step
 * streams every slab of a step through them, gemm_stream the slabs of one product. */
#include <cuda.h>
#include <cuda_runtime.h>

#include "cuda/kernels.h"

typedef CUresult (*encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                              const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                              const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                              CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static int get_encode(encode_fn *encode) {
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                     cudaEnableDefault, &q);
    if (e != cudaSuccess) return (int)e;
    if (q != cudaDriverEntryPointSuccess || !fn) return (int)cudaErrorNotSupported;
    *encode = (encode_fn)fn;
    return 0;
}

static int encode_one(encode_fn encode, void *out, const ni_half16 *w, size_t IC, size_t OC,
                      ni_cuda_dtype dt) {
    const CUtensorMapDataType type =
        dt == NI_CUDA_F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    const cuuint64_t dims[2] = {IC, OC}, strides[1] = {IC * 2};
    const cuuint32_t box[2] = {NI_CUDA_SLAB_COLS, NI_CUDA_SLAB_ROWS}, elem[2] = {1, 1};
    /* no L2 promotion: each weight is read once per step (measured: +0.6-1 % at gpt2-xl batch
     * 1-4 over 256-byte promotion, H200) */
    CUresult r = encode((CUtensorMap *)out, type, 2, (void *)w, dims, strides, box, elem,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                        CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? 0 : (int)cudaErrorInvalidValue;
}

extern "C" int ni_cuda_weight_tensor_map(void *out, const ni_half16 *w, size_t IC, size_t OC,
                                         ni_cuda_dtype dt) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    encode_fn encode;
    int e = get_encode(&encode);
    return e ? e : encode_one(encode, out, w, IC, OC, dt);
}

extern "C" int ni_cuda_weight_tensor_maps(void *out, const ni_cuda_layer_weights *layers, size_t L,
                                          const ni_half16 *wte, size_t C, size_t V,
                                          ni_cuda_dtype dt) {
    if (dt != NI_CUDA_BF16 && dt != NI_CUDA_F16) return (int)cudaErrorInvalidValue;
    encode_fn encode;
    int e = get_encode(&encode);
    if (e) return e;
    for (size_t ph = 0; ph <= 4 * L; ph++) {
        const ni_half16 *w;
        size_t IC = C, OC;
        if (ph == 4 * L) {
            w = wte, OC = V;
        } else {
            const ni_cuda_layer_weights *y = layers + ph / 4;
            switch (ph % 4) {
            case 0:
                w = y->qkv_w, OC = 3 * C;
                break;
            case 1:
                w = y->proj_w, OC = C;
                break;
            case 2:
                w = y->fc_w, OC = 4 * C;
                break;
            default:
                w = y->fcproj_w, IC = 4 * C, OC = C;
                break;
            }
        }
        e = encode_one(encode, (uint8_t *)out + ph * 128, w, IC, OC, dt);
        if (e) return e;
    }
    return 0;
}
