// cublaslt_bias.cu — a linear layer's forward pass with cuBLASLt, as llm.c's matmul_forward does it:
// out = inp · weightᵀ + bias, with the bias (and optionally GELU) fused into the matmul's epilogue.
// Row-major (B·T, C) × (OC, C)ᵀ is column-major weight(C, OC)ᵀ · inp(C, B·T): TRANSA = T, TRANSB = N.
// Checked against a plain triple loop. Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/cublaslt_bias.cu
//   on a GPU:    nvcc -O2 -o cublaslt_bias dev/examples/cublaslt_bias.cu -lcublasLt && ./cublaslt_bias
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            std::exit(1);                                                                    \
        }                                                                                    \
    } while (0)
#define CHECK_BLAS(call)                                                                                 \
    do {                                                                                                 \
        cublasStatus_t s_ = (call);                                                                      \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                               \
            std::fprintf(stderr, "%s:%d: cuBLAS status %d\n", __FILE__, __LINE__, static_cast<int>(s_)); \
            std::exit(1);                                                                                \
        }                                                                                                \
    } while (0)

// out (N, OC) = epilogue(inp (N, C) · weight (OC, C)ᵀ + bias (OC)), all row-major
static void linear_forward(cublasLtHandle_t lt, float* out, const float* inp, const float* weight, const float* bias,
                           int N, int C, int OC, cublasLtEpilogue_t epilogue, void* workspace, size_t workspace_bytes) {
    cublasLtMatmulDesc_t desc;
    CHECK_BLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof n));
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    CHECK_BLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    cublasLtMatrixLayout_t w_layout, in_layout, out_layout;
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&w_layout, CUDA_R_32F, C, OC, C));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&in_layout, CUDA_R_32F, C, N, C));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&out_layout, CUDA_R_32F, OC, N, OC));
    cublasLtMatmulPreference_t pref;
    CHECK_BLAS(cublasLtMatmulPreferenceCreate(&pref));
    CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                    sizeof workspace_bytes));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    CHECK_BLAS(cublasLtMatmulAlgoGetHeuristic(lt, desc, w_layout, in_layout, out_layout, out_layout, pref, 1,
                                              &heuristic, &found));
    if (found == 0) {
        std::printf("no cuBLASLt algorithm\n");
        std::exit(1);
    }
    const float alpha = 1.0f, beta = 0.0f;
    CHECK_BLAS(cublasLtMatmul(lt, desc, &alpha, weight, w_layout, inp, in_layout, &beta, out, out_layout, out,
                              out_layout, &heuristic.algo, workspace, workspace_bytes, nullptr));
    CHECK_BLAS(cublasLtMatmulPreferenceDestroy(pref));
    CHECK_BLAS(cublasLtMatmulDescDestroy(desc));
    CHECK_BLAS(cublasLtMatrixLayoutDestroy(w_layout));
    CHECK_BLAS(cublasLtMatrixLayoutDestroy(in_layout));
    CHECK_BLAS(cublasLtMatrixLayoutDestroy(out_layout));
}

int main() {
    const int N = 96, C = 64, OC = 80;  // N = B·T rows
    std::vector<float> inp(N * C), weight(OC * C), bias(OC);
    unsigned state = 12345;
    auto uniform = [&] {
        state = state * 1664525u + 1013904223u;
        return static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
    };
    for (float& v : inp) v = uniform();
    for (float& v : weight) v = uniform();
    for (float& v : bias) v = uniform();
    float *d_inp, *d_weight, *d_bias, *d_out;
    CHECK(cudaMalloc(&d_inp, inp.size() * sizeof(float)));
    CHECK(cudaMalloc(&d_weight, weight.size() * sizeof(float)));
    CHECK(cudaMalloc(&d_bias, bias.size() * sizeof(float)));
    CHECK(cudaMalloc(&d_out, N * OC * sizeof(float)));
    CHECK(cudaMemcpy(d_inp, inp.data(), inp.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_weight, weight.data(), weight.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_bias, bias.data(), bias.size() * sizeof(float), cudaMemcpyHostToDevice));
    size_t workspace_bytes = 4 << 20;
    void* workspace;
    CHECK(cudaMalloc(&workspace, workspace_bytes));
    cublasLtHandle_t lt;
    CHECK_BLAS(cublasLtCreate(&lt));

    int wrong = 0;
    for (cublasLtEpilogue_t epilogue : {CUBLASLT_EPILOGUE_BIAS, CUBLASLT_EPILOGUE_GELU_BIAS}) {
        linear_forward(lt, d_out, d_inp, d_weight, d_bias, N, C, OC, epilogue, workspace, workspace_bytes);
        std::vector<float> out(N * OC);
        CHECK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
        for (int r = 0; r < N; r++)
            for (int o = 0; o < OC; o++) {
                double v = bias[o];
                for (int c = 0; c < C; c++) v += static_cast<double>(inp[r * C + c]) * weight[o * C + c];
                if (epilogue == CUBLASLT_EPILOGUE_GELU_BIAS)  // cuBLASLt's GELU: the tanh approximation
                    v = 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
                // TF32 tensor cores (a GPU may use them for fp32) keep 10 mantissa bits: allow for that
                if (std::fabs(out[r * OC + o] - v) > 2e-3 * (1.0 + std::fabs(v)) && wrong++ < 5)
                    std::printf("epilogue %d: out[%d][%d] = %g, expected %g\n", static_cast<int>(epilogue), r, o,
                                out[r * OC + o], v);
            }
    }
    CHECK_BLAS(cublasLtDestroy(lt));
    for (void* p : {(void*)d_inp, (void*)d_weight, (void*)d_bias, (void*)d_out, workspace}) CHECK(cudaFree(p));
    std::printf("cublaslt_bias: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
