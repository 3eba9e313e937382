#ifndef VFFN_CSYSTEM_H
#define VFFN_CSYSTEM_H
#include <stdint.h>
#include <sys/types.h>

/// copy_file_range(2), which glibc declares only under _GNU_SOURCE and Swift's Glibc module
/// therefore does not export: copies file to file in the kernel, sharing extents where the
/// filesystem can (what `cp` does).
ssize_t vffn_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len);

#endif
