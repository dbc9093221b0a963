//! kernels/attention.cu (not written yet).
