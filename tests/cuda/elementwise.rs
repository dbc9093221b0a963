//! kernels/elementwise.cu (not written yet).
