//! kernels/embedding.cu (not written yet).
