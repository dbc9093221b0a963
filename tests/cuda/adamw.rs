//! kernels/adamw.cu (not written yet).
