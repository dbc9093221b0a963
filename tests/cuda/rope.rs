//! kernels/rope.cu (not written yet).
