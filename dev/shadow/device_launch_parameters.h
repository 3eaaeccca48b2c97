// CPU build: threadIdx, blockIdx, blockDim, gridDim and warpSize are defined by dev/cudasim.h.
#pragma once
