//! kernels/rows.cu (not written yet).
