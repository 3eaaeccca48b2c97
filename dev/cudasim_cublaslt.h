// cudasim_cublaslt.h — cuBLASLt on the CPU: the subset that llm.c's dev/cuda files and
// similar programs use, on the same OpenBLAS GEMM as dev/cudasim.h's cuBLAS, plus cuBLAS level 2 (gemv).
//
//   D = epilogue(alpha · op(A) · op(B) + beta · C)      column-major, as cuBLASLt defines it
//
// Supported: handles, matmul descriptors (compute type 32F and its fast variants, TRANSA/TRANSB,
// EPILOGUE, BIAS_POINTER, BIAS_DATA_TYPE, BIAS_BATCH_STRIDE, SCALE_TYPE), matrix layouts (fp32, bf16,
// fp16; column order; BATCH_COUNT and STRIDED_BATCH_OFFSET), preferences, the heuristic (one algorithm)
// and cublasLtMatmul with the epilogues DEFAULT, RELU, BIAS, RELU_BIAS, GELU, GELU_BIAS, GELU_AUX and
// GELU_AUX_BIAS (GELU is the tanh approximation, as cuBLASLt's; the AUX ones also store the value before the GELU
// at EPILOGUE_AUX_POINTER, leading dimension EPILOGUE_AUX_LD, in D's type or EPILOGUE_AUX_DATA_TYPE). The result is
// formed in fp32 and rounded once to D's type.
// Anything else returns CUBLAS_STATUS_NOT_SUPPORTED with a message naming it.
//
// The descriptors live inside cuBLASLt's own opaque structs (cublasLtMatmulDescOpaque_t, ...), so the
// *Init functions work on caller-owned storage exactly as *Create does on ours.
#ifndef GPTCU_CUDASIM_CUBLASLT_H
#define GPTCU_CUDASIM_CUBLASLT_H
#include <cublasLt.h>
#endif  // GPTCU_CUDASIM_CUBLASLT_H

#if defined(GPTCU_CUDASIM_IMPLEMENTED) && !defined(GPTCU_CUDASIM_CUBLASLT_IMPLEMENTED)
#define GPTCU_CUDASIM_CUBLASLT_IMPLEMENTED

namespace cudasim {
struct LtDesc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t transa, transb;
    cublasLtEpilogue_t epilogue;
    const void* bias;
    int32_t bias_type;  // -1: D's type
    int64_t bias_batch_stride;
    int32_t pointer_mode;
    void* aux;           // GELU_AUX*: where the pre-GELU values go
    int64_t aux_ld;      // its leading dimension (elements)
    int32_t aux_type;    // -1: D's type
    int64_t aux_batch_stride;
};
struct LtLayout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t order;
    int32_t batch;
    int64_t batch_stride;
};
static_assert(sizeof(LtDesc) <= sizeof(cublasLtMatmulDescOpaque_t), "LtDesc must fit cuBLASLt's opaque descriptor");
static_assert(sizeof(LtLayout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "LtLayout must fit cuBLASLt's opaque layout");
static LtDesc& desc(cublasLtMatmulDesc_t d) { return *reinterpret_cast<LtDesc*>(d); }
static LtLayout& layout(cublasLtMatrixLayout_t l) { return *reinterpret_cast<LtLayout*>(l); }

static cublasStatus_t lt_unsupported(const char* what, long long value) {
    std::fprintf(stderr, "cudasim: cuBLASLt: %s %lld is not emulated on the CPU (CUBLAS_STATUS_NOT_SUPPORTED)\n", what,
                 value);
    return CUBLAS_STATUS_NOT_SUPPORTED;
}
static size_t type_bytes(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }
static float load_as_float(const void* p, cudaDataType t, size_t i) {
    if (t == CUDA_R_32F) return static_cast<const float*>(p)[i];
    if (t == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    return __half2float(static_cast<const __half*>(p)[i]);
}
static void store_from_float(void* p, cudaDataType t, size_t i, float v) {
    if (t == CUDA_R_32F)
        static_cast<float*>(p)[i] = v;
    else if (t == CUDA_R_16BF)
        static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
    else
        static_cast<__half*>(p)[i] = __float2half(v);
}
// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
static float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
}  // namespace cudasim

struct cublasLtContext {
    int unused;
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
    *h = new cublasLtContext{};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
size_t cublasLtGetVersion() { return CUBLAS_VERSION; }
const char* cublasLtGetStatusName(cublasStatus_t s) { return cublasGetStatusName(s); }
const char* cublasLtGetStatusString(cublasStatus_t s) { return cublasGetStatusString(s); }

cublasStatus_t cublasLtMatmulDescInit_internal(cublasLtMatmulDesc_t d, size_t size, cublasComputeType_t compute,
                                               cudaDataType_t scale) {
    if (size < sizeof(cudasim::LtDesc)) return CUBLAS_STATUS_INVALID_VALUE;
    cudasim::desc(d) =
        cudasim::LtDesc{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr, -1, 0, 0,
                        nullptr,  0,     -1,          0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
    *d = new cublasLtMatmulDescOpaque_t{};
    return cublasLtMatmulDescInit_internal(*d, sizeof(cublasLtMatmulDescOpaque_t), compute, scale);
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
    cudasim::LtDesc& m = cudasim::desc(d);
    auto read = [&](auto& field) {
        if (size != sizeof field) return CUBLAS_STATUS_INVALID_VALUE;
        std::memcpy(&field, buf, sizeof field);
        return CUBLAS_STATUS_SUCCESS;
    };
    switch (attr) {
        case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return read(m.compute);
        case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return read(m.scale);
        case CUBLASLT_MATMUL_DESC_POINTER_MODE: return read(m.pointer_mode);
        case CUBLASLT_MATMUL_DESC_TRANSA: return read(m.transa);
        case CUBLASLT_MATMUL_DESC_TRANSB: return read(m.transb);
        case CUBLASLT_MATMUL_DESC_EPILOGUE: return read(m.epilogue);
        case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return read(m.bias);
        case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return read(m.bias_type);
        case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: return read(m.bias_batch_stride);
        case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return read(m.aux);
        case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return read(m.aux_ld);
        case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: return read(m.aux_type);
        case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE: return read(m.aux_batch_stride);
        case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET:
        case CUBLASLT_MATMUL_DESC_FAST_ACCUM: return CUBLAS_STATUS_SUCCESS;  // hints
        default: return cudasim::lt_unsupported("matmul descriptor attribute", attr);
    }
}
cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, void* buf,
                                              size_t size, size_t* written) {
    cudasim::LtDesc& m = cudasim::desc(d);
    auto write = [&](const auto& field) {
        if (written) *written = sizeof field;
        if (size < sizeof field) return CUBLAS_STATUS_INVALID_VALUE;
        std::memcpy(buf, &field, sizeof field);
        return CUBLAS_STATUS_SUCCESS;
    };
    switch (attr) {
        case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return write(m.compute);
        case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return write(m.scale);
        case CUBLASLT_MATMUL_DESC_TRANSA: return write(m.transa);
        case CUBLASLT_MATMUL_DESC_TRANSB: return write(m.transb);
        case CUBLASLT_MATMUL_DESC_EPILOGUE: return write(m.epilogue);
        case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return write(m.bias);
        default: return cudasim::lt_unsupported("matmul descriptor attribute", attr);
    }
}

cublasStatus_t cublasLtMatrixLayoutInit_internal(cublasLtMatrixLayout_t l, size_t size, cudaDataType type,
                                                 uint64_t rows, uint64_t cols, int64_t ld) {
    if (size < sizeof(cudasim::LtLayout)) return CUBLAS_STATUS_INVALID_VALUE;
    cudasim::layout(l) = cudasim::LtLayout{type, rows, cols, ld, CUBLASLT_ORDER_COL, 1, 0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    *l = new cublasLtMatrixLayoutOpaque_t{};
    return cublasLtMatrixLayoutInit_internal(*l, sizeof(cublasLtMatrixLayoutOpaque_t), type, rows, cols, ld);
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t size) {
    cudasim::LtLayout& m = cudasim::layout(l);
    auto read = [&](auto& field) {
        if (size != sizeof field) return CUBLAS_STATUS_INVALID_VALUE;
        std::memcpy(&field, buf, sizeof field);
        return CUBLAS_STATUS_SUCCESS;
    };
    switch (attr) {
        case CUBLASLT_MATRIX_LAYOUT_TYPE: return read(m.type);
        case CUBLASLT_MATRIX_LAYOUT_ORDER: return read(m.order);
        case CUBLASLT_MATRIX_LAYOUT_ROWS: return read(m.rows);
        case CUBLASLT_MATRIX_LAYOUT_COLS: return read(m.cols);
        case CUBLASLT_MATRIX_LAYOUT_LD: return read(m.ld);
        case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return read(m.batch);
        case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return read(m.batch_stride);
        default: return cudasim::lt_unsupported("matrix layout attribute", attr);
    }
}

cublasStatus_t cublasLtMatmulPreferenceInit_internal(cublasLtMatmulPreference_t p, size_t size) {
    if (size < sizeof(cublasLtMatmulPreferenceOpaque_t)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memset(p, 0, sizeof *p);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
    *p = new cublasLtMatmulPreferenceOpaque_t{};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}
// Preferences (workspace limit, alignment, search mode) steer the choice among algorithms; there is one.
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t) {
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (requested <= 0) return CUBLAS_STATUS_INVALID_VALUE;
    std::memset(&results[0], 0, sizeof results[0]);  // the one algorithm: OpenBLAS, no workspace
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t computeDesc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t) {
    using namespace cudasim;
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    const LtDesc& m = desc(computeDesc);
    const LtLayout &la = layout(Adesc), &lb = layout(Bdesc), &lc = layout(Cdesc), &ld = layout(Ddesc);
    for (const LtLayout* l : {&la, &lb, &lc, &ld}) {
        if (l->order != CUBLASLT_ORDER_COL) return lt_unsupported("matrix order (only column-major)", l->order);
        if (l->type != CUDA_R_32F && l->type != CUDA_R_16BF && l->type != CUDA_R_16F)
            return lt_unsupported("matrix data type (fp32, bf16, fp16)", l->type);
    }
    if (m.scale != CUDA_R_32F) return lt_unsupported("scale type (only CUDA_R_32F)", m.scale);
    if (m.pointer_mode != CUBLASLT_POINTER_MODE_HOST && m.pointer_mode != CUBLASLT_POINTER_MODE_DEVICE)
        return lt_unsupported("pointer mode", m.pointer_mode);
    bool bias = false, relu = false, gelu = false, aux = false;
    switch (m.epilogue) {
        case CUBLASLT_EPILOGUE_DEFAULT: break;
        case CUBLASLT_EPILOGUE_RELU: relu = true; break;
        case CUBLASLT_EPILOGUE_BIAS: bias = true; break;
        case CUBLASLT_EPILOGUE_RELU_BIAS: relu = bias = true; break;
        case CUBLASLT_EPILOGUE_GELU: gelu = true; break;
        case CUBLASLT_EPILOGUE_GELU_BIAS: gelu = bias = true; break;
        case CUBLASLT_EPILOGUE_GELU_AUX: gelu = aux = true; break;
        case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: gelu = aux = bias = true; break;
        default: return lt_unsupported("epilogue", m.epilogue);
    }
    if (aux && (!m.aux || m.aux_ld < static_cast<int64_t>(ld.rows))) {
        std::fprintf(stderr,
                     "cudasim: cublasLtMatmul: a GELU_AUX epilogue needs CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER and "
                     "an EPILOGUE_AUX_LD >= D's rows (CUBLAS_STATUS_INVALID_VALUE)\n");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (bias && !m.bias) {
        std::fprintf(stderr,
                     "cudasim: cublasLtMatmul: a bias epilogue without CUBLASLT_MATMUL_DESC_BIAS_POINTER "
                     "(CUBLAS_STATUS_INVALID_VALUE)\n");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    // op(A) is m×k, op(B) k×n, C and D m×n
    int rows = static_cast<int>(ld.rows), cols = static_cast<int>(ld.cols);
    int k = static_cast<int>(m.transa == CUBLAS_OP_N ? la.cols : la.rows);
    int kb = static_cast<int>(m.transb == CUBLAS_OP_N ? lb.rows : lb.cols);
    int am = static_cast<int>(m.transa == CUBLAS_OP_N ? la.rows : la.cols);
    int bn = static_cast<int>(m.transb == CUBLAS_OP_N ? lb.cols : lb.rows);
    if (k != kb || am != rows || bn != cols || lc.rows != ld.rows || lc.cols != ld.cols) {
        std::fprintf(stderr,
                     "cudasim: cublasLtMatmul: shapes do not agree: op(A) %d×%d, op(B) %d×%d, C %llu×%llu, D %d×%d "
                     "(CUBLAS_STATUS_INVALID_VALUE)\n",
                     am, k, kb, bn, static_cast<unsigned long long>(lc.rows), static_cast<unsigned long long>(lc.cols),
                     rows, cols);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    int batch = ld.batch;
    float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    cudaDataType bias_type = m.bias_type < 0 ? ld.type : static_cast<cudaDataType>(m.bias_type);
    cudaDataType aux_type = m.aux_type < 0 ? ld.type : static_cast<cudaDataType>(m.aux_type);
    std::vector<float> acc(static_cast<size_t>(rows) * cols);  // fp32, leading dimension `rows`
    cublasContext blas{};
    for (int i = 0; i < batch; i++) {
        const char* Ai = static_cast<const char*>(A) + (la.batch > 1 ? i * la.batch_stride * type_bytes(la.type) : 0);
        const char* Bi = static_cast<const char*>(B) + (lb.batch > 1 ? i * lb.batch_stride * type_bytes(lb.type) : 0);
        const char* Ci = static_cast<const char*>(C) + (lc.batch > 1 ? i * lc.batch_stride * type_bytes(lc.type) : 0);
        char* Di = static_cast<char*>(D) + i * ld.batch_stride * type_bytes(ld.type);
        // acc = beta·C, then acc += alpha·op(A)·op(B) through the cuBLAS shim (fp32 out)
        for (int j = 0; j < cols; j++)
            for (int r = 0; r < rows; r++)
                acc[static_cast<size_t>(j) * rows + r] =
                    b == 0.0f ? 0.0f : b * load_as_float(Ci, lc.type, static_cast<size_t>(j) * lc.ld + r);
        float one = 1.0f;
        cublasStatus_t s = gemm_ex("cublasLtMatmul", &blas, m.transa, m.transb, rows, cols, k, &a, Ai, la.type,
                                   static_cast<int>(la.ld), 0, Bi, lb.type, static_cast<int>(lb.ld), 0, &one,
                                   acc.data(), CUDA_R_32F, rows, 0, 1, m.compute);
        if (s != CUBLAS_STATUS_SUCCESS) return s;
        const char* bias_i =
            static_cast<const char*>(m.bias) + (bias ? i * m.bias_batch_stride * type_bytes(bias_type) : 0);
        char* aux_i = static_cast<char*>(m.aux) + (aux ? i * m.aux_batch_stride * type_bytes(aux_type) : 0);
        for (int j = 0; j < cols; j++)
            for (int r = 0; r < rows; r++) {
                float v = acc[static_cast<size_t>(j) * rows + r];
                if (bias) v += load_as_float(bias_i, bias_type, static_cast<size_t>(r));  // one bias per row of D
                if (relu) v = v > 0.0f ? v : 0.0f;
                if (aux) store_from_float(aux_i, aux_type, static_cast<size_t>(j) * m.aux_ld + r, v);  // GELU's input
                if (gelu) v = gelu_tanh(v);
                store_from_float(Di, ld.type, static_cast<size_t>(j) * ld.ld + r, v);
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}

// ----------------------------------------------------------------------------
// cuBLAS level 2: y = alpha·op(A)·x + beta·y (column-major A, m×n), on OpenBLAS.
cublasStatus_t cublasSgemv_v2(cublasHandle_t h, cublasOperation_t trans, int m, int n, const float* alpha,
                              const float* A, int lda, const float* x, int incx, const float* beta, float* y,
                              int incy) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || lda < std::max(1, m) || incx == 0 || incy == 0) return CUBLAS_STATUS_INVALID_VALUE;
    cblas_sgemv(CblasColMajor, cudasim::to_cblas(trans), m, n, *alpha, A, lda, x, incx, *beta, y, incy);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDgemv_v2(cublasHandle_t h, cublasOperation_t trans, int m, int n, const double* alpha,
                              const double* A, int lda, const double* x, int incx, const double* beta, double* y,
                              int incy) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || lda < std::max(1, m) || incx == 0 || incy == 0) return CUBLAS_STATUS_INVALID_VALUE;
    cblas_dgemv(CblasColMajor, cudasim::to_cblas(trans), m, n, *alpha, A, lda, x, incx, *beta, y, incy);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const double* alpha, const double* A, int lda, const double* B, int ldb,
                              const double* beta, double* C, int ldc) {
    if (cublasStatus_t s = cudasim::check_gemm("cublasDgemm", h, ta, tb, m, n, k, lda, ldb, ldc, 1);
        s != CUBLAS_STATUS_SUCCESS)
        return s;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    cblas_dgemm(CblasColMajor, cudasim::to_cblas(ta), cudasim::to_cblas(tb), m, n, k, *alpha, A, lda, B, ldb, *beta, C,
                ldc);
    return CUBLAS_STATUS_SUCCESS;
}
#endif  // GPTCU_CUDASIM_CUBLASLT_IMPLEMENTED
