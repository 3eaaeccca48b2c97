// two_files_ref.cpp — the CPU reference of two_files.cu, in a file of its own that knows nothing of CUDA (as the CUDA
// samples' *_gold.cpp files): y = a·x + y.
void saxpy_reference(float a, const float* x, float* y, int n) {
    for (int i = 0; i < n; i++) y[i] = a * x[i] + y[i];
}
