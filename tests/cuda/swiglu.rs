//! kernels/swiglu.cu (not written yet).
