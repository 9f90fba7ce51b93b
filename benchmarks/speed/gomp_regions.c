/* Counts OpenMP parallel regions (libgomp's GOMP_parallel) in a process, for bench_forward_load.
 *
 * Built on the fly (cc -shared -fPIC gomp_regions.c -ldl) and loaded with LD_PRELOAD in a child
 * process; gomp_regions() returns the count so far (read with ctypes). Each region ends at a
 * barrier where a thread waits for the others.
 */
#define _GNU_SOURCE
#include <dlfcn.h>

static unsigned long regions;

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags) {
    static void (*real)(void (*)(void *), void *, unsigned, unsigned);
    if (!real) real = (void (*)(void (*)(void *), void *, unsigned, unsigned))dlsym(RTLD_NEXT, "GOMP_parallel");
    __atomic_add_fetch(&regions, 1, __ATOMIC_RELAXED);
    real(fn, data, num_threads, flags);
}

unsigned long gomp_regions(void) { return regions; }
