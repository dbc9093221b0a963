/* What every kernel parameter header shares. Each kernels/NAME.cu has its
 * parameter structs in kernels/include/NAME.h, one definition for both sides:
 * the kernels include this file, and build.rs runs bindgen over it for Rust.
 * Every kernel takes one struct by value. Device pointers are plain 64-bit
 * addresses (a CUdeviceptr) so the header needs no CUDA types; the kernel
 * casts them. Element types are in the field comments: bf16 activations and
 * weights, fp32 master weights, optimizer moments and statistics
 * (DESIGN.md §3). Counts are 32-bit: one kernel never sees 2^32 elements. */
#pragma once
#include <stdint.h>

typedef uint64_t dptr;

/* Threads per block of the row kernels (one block per row). */
#define ENGINE_ROW_THREADS 256

