/* A cache of large aligned blocks, preloaded (LD_PRELOAD) into a CPU training process.
 *
 * Why: XLA's CPU runtime allocates each step's temporary buffer (hundreds of MiB to GiB) with
 * posix_memalign and frees it after the step. glibc serves a block that large with a fresh mmap and
 * returns it with munmap, so every step page-faults the whole buffer in again (360,000 faults per step
 * for the 27M-parameter benchmark config). Here a freed large block is kept and handed back to the next
 * request of exactly the same size and alignment, which is what the next step asks for: its pages stay
 * resident. Everything else goes to the allocator underneath, untouched.
 *
 * Only blocks from posix_memalign of at least TOKENFORMER_BLOCK_CACHE_MIN_MIB (default 16) are
 * tracked, at most SLOTS of them. Freed ones are kept while the kept bytes stay within
 * TOKENFORMER_BLOCK_CACHE_MIB (default a quarter of physical memory); past that, the oldest kept
 * blocks are really freed. realloc of a tracked block untracks it first.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define SLOTS 64

typedef struct {
  void *ptr;          /* NULL: slot unused */
  size_t size;
  int kept;           /* 1: freed by the program and held here for reuse */
  unsigned long age;  /* when it was kept, for evicting the oldest first */
} block_t;

static block_t blocks[SLOTS];
static int tracked;                 /* slots in use */
static int high_water;              /* slots at or past it have never been used */
static size_t kept_bytes, max_kept_bytes, min_size;
static unsigned long clock_ticks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int (*next_memalign)(void **, size_t, size_t);
static void (*next_free)(void *);
static void *(*next_realloc)(void *, size_t);

/* glibc's own entry points, for the calls that may come before init() has looked up the next ones */
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

static size_t env_mib(const char *name, size_t fallback) {
  const char *text = getenv(name);
  if (!text || !*text) return fallback;
  char *end;
  unsigned long long mib = strtoull(text, &end, 10);
  return *end ? fallback : (size_t)mib << 20;
}

static void lock_for_fork(void) { pthread_mutex_lock(&lock); }
static void unlock_after_fork(void) { pthread_mutex_unlock(&lock); }

__attribute__((constructor)) static void init(void) {
  next_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
  next_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
  next_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
  size_t physical = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
  max_kept_bytes = env_mib("TOKENFORMER_BLOCK_CACHE_MIB", physical / 4);
  min_size = env_mib("TOKENFORMER_BLOCK_CACHE_MIN_MIB", (size_t)16 << 20);
  /* a fork while another thread holds the lock must not leave the child's copy locked */
  pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork);
}

static void release(int i) {  /* lock held: really free a kept block and drop its slot */
  kept_bytes -= blocks[i].size;
  next_free(blocks[i].ptr);
  __atomic_store_n(&blocks[i].ptr, NULL, __ATOMIC_RELEASE);
  __atomic_sub_fetch(&tracked, 1, __ATOMIC_RELEASE);
}

/* Whether ptr may be a tracked block, without the lock: free() is called for every allocation in the
 * process, and almost none of them are ours. Tracked pointers are published before posix_memalign
 * returns them, so a pointer the caller frees is visible here if it is ours. */
static int maybe_tracked(void *ptr) {
  if (__atomic_load_n(&tracked, __ATOMIC_ACQUIRE) == 0) return 0;
  int end = __atomic_load_n(&high_water, __ATOMIC_ACQUIRE);
  for (int i = 0; i < end; i++)
    if (__atomic_load_n(&blocks[i].ptr, __ATOMIC_ACQUIRE) == ptr) return 1;
  return 0;
}

int posix_memalign(void **out, size_t alignment, size_t size) {
  if (!next_memalign) {
    void *ptr = __libc_memalign(alignment, size);
    if (!ptr) return ENOMEM;
    *out = ptr;
    return 0;
  }
  if (size < min_size || alignment < sizeof(void *) || (alignment & (alignment - 1)))
    return next_memalign(out, alignment, size);   /* small, or an invalid alignment glibc reports */
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; i++) {
    if (blocks[i].ptr && blocks[i].kept && blocks[i].size == size &&
        (uintptr_t)blocks[i].ptr % alignment == 0) {
      blocks[i].kept = 0;
      kept_bytes -= size;
      *out = blocks[i].ptr;
      pthread_mutex_unlock(&lock);
      return 0;
    }
  }
  pthread_mutex_unlock(&lock);
  int status = next_memalign(out, alignment, size);
  if (status) return status;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; i++) {
    if (!blocks[i].ptr) {
      blocks[i].size = size;
      blocks[i].kept = 0;
      __atomic_store_n(&blocks[i].ptr, *out, __ATOMIC_RELEASE);
      __atomic_add_fetch(&tracked, 1, __ATOMIC_RELEASE);
      if (i >= high_water) __atomic_store_n(&high_water, i + 1, __ATOMIC_RELEASE);
      break;
    }
  }
  pthread_mutex_unlock(&lock);
  return 0;
}

void free(void *ptr) {
  if (!ptr) return;
  if (!next_free) { __libc_free(ptr); return; }   /* before init nothing is tracked */
  if (!maybe_tracked(ptr)) { next_free(ptr); return; }
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; i++) {
    if (blocks[i].ptr == ptr) {
      if (blocks[i].kept) {   /* freed twice: fail loudly, as glibc would, instead of handing it out */
        static const char message[] = "large_block_cache: free(): double free detected\n";
        (void)!write(2, message, sizeof message - 1);
        abort();
      }
      blocks[i].kept = 1;
      blocks[i].age = ++clock_ticks;
      kept_bytes += blocks[i].size;
      while (kept_bytes > max_kept_bytes) {   /* evict the oldest kept blocks (possibly this one) */
        int oldest = -1;
        for (int j = 0; j < SLOTS; j++)
          if (blocks[j].ptr && blocks[j].kept && (oldest < 0 || blocks[j].age < blocks[oldest].age))
            oldest = j;
        release(oldest);
      }
      pthread_mutex_unlock(&lock);
      return;
    }
  }
  pthread_mutex_unlock(&lock);
  next_free(ptr);
}

void *realloc(void *ptr, size_t size) {
  if (!next_realloc) return __libc_realloc(ptr, size);
  if (ptr && maybe_tracked(ptr)) {
    pthread_mutex_lock(&lock);
    for (int i = 0; i < SLOTS; i++) {
      if (blocks[i].ptr == ptr) {
        __atomic_store_n(&blocks[i].ptr, NULL, __ATOMIC_RELEASE);
        __atomic_sub_fetch(&tracked, 1, __ATOMIC_RELEASE);
        break;
      }
    }
    pthread_mutex_unlock(&lock);
  }
  return next_realloc(ptr, size);
}
