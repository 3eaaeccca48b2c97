# gpt.cu — one Makefile, two builds of the same sources (see README.md).
#   CPU build (default for tests): g++ compiles every .cu/.cuh against dev/cudasim.h
#   GPU build: nvcc for sm_80 + sm_90 (or the local GPU's arch)
.DEFAULT_GOAL := all
BUILD    := build
CXX      ?= g++
CXXFLAGS ?= -std=c++20 -O2 -g -march=native -Wall -Wextra
LDLIBS_CPU := -lpthread
TEST_BINS_CPU :=

# Each component adds its own rules and appends to TEST_BINS_CPU.
include tokenizer/tokenizer.mk
