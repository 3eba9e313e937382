#define _GNU_SOURCE
#include <unistd.h>
#include "csystem.h"

ssize_t vffn_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len) {
    loff_t in = off_in ? (loff_t)*off_in : 0, out = off_out ? (loff_t)*off_out : 0;
    ssize_t n = copy_file_range(fd_in, off_in ? &in : NULL, fd_out, off_out ? &out : NULL, len, 0);
    if (off_in) *off_in = in;
    if (off_out) *off_out = out;
    return n;
}

#include <malloc.h>

int vffn_malloc_keep_freed(size_t mmap_threshold, size_t trim_threshold) {
    // Both or neither: M_TRIM_THRESHOLD alone would freeze the mmap threshold at its default.
    if (!mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold)) return 0;
    return mallopt(M_TRIM_THRESHOLD, (int)trim_threshold);
}
