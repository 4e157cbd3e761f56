# The fused LSTM cell pass of cell.h (forward and backward, float and double), for the
# kernels that call it.
cdef extern from "cell.h":
    void fl_stream_fence() noexcept nogil
    void cell_forward_f(float* act, float* c, float* h, float* out, unsigned char* clipped,
                        const float* zx, const float* zh, const float* c_prev,
                        const float* peep, float clip, int n, int H, int zx_stride,
                        int zh_stride, int stream) noexcept nogil
    void cell_forward_d(double* act, double* c, double* h, double* out, unsigned char* clipped,
                        const double* zx, const double* zh, const double* c_prev,
                        const double* peep, double clip, int n, int H, int zx_stride,
                        int zh_stride, int stream) noexcept nogil
    void cell_backward_f(float* dz, float* dc, float* dpeep, const float* dh,
                         const float* dh_out, const float* act, const unsigned char* clipped,
                         const float* c, const float* c_prev, const float* peep, int n,
                         int H) noexcept nogil
    void cell_backward_d(double* dz, double* dc, double* dpeep, const double* dh,
                         const double* dh_out, const double* act, const unsigned char* clipped,
                         const double* c, const double* c_prev, const double* peep, int n,
                         int H) noexcept nogil
