#ifndef VFFN_CSYSTEM_H
#define VFFN_CSYSTEM_H
#include <stdint.h>
#include <sys/types.h>

/// copy_file_range(2), which glibc declares only under _GNU_SOURCE and Swift's Glibc module
/// therefore does not export: copies file to file in the kernel, sharing extents where the
/// filesystem can (what `cp` does).
ssize_t vffn_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len);

/// mallopt(3)'s M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, which malloc.h declares and Swift's Glibc
/// module does not export: allocations below the first come from the heap, and freed heap above
/// the second goes back to the kernel. Returns 0 if glibc refused (the first above 32 MiB).
int vffn_malloc_keep_freed(size_t mmap_threshold, size_t trim_threshold);

#endif
