// A minimal CUPTI activity tracer, loaded into any CUDA program by the driver (CUDA_INJECTION64_PATH) or
// with LD_PRELOAD: it records every kernel (start, end, stream, correlation id, name), every memcpy, and
// the driver API calls (host-side launch times), and writes them as tab-separated lines to
// $CUPTI_TRACE_OUT. The GPU machine has no Nsight Systems; this gives the same timeline for our Go
// binaries. Records are flushed every 200 ms (a Go program exits without running C destructors).
// Build on the GPU machine: scripts/gpu/cupti/build.sh. KSTRUCT/MSTRUCT name the header's newest kernel and
// memcpy record versions (CUPTI fills records of the newest version its header declares).
#include <cupti.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef KSTRUCT
#define KSTRUCT CUpti_ActivityKernel9
#endif
#ifndef SSTRUCT
#define SSTRUCT CUpti_ActivityMemset4
#endif
#ifndef MSTRUCT
#define MSTRUCT CUpti_ActivityMemcpy5
#endif

static FILE *out;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int started;

#define BUF_SIZE (4 << 20)

static void CUPTIAPI requested(uint8_t **buffer, size_t *size, size_t *maxRecords) {
  *buffer = (uint8_t *)aligned_alloc(8, BUF_SIZE);
  *size = BUF_SIZE;
  *maxRecords = 0;
}

static void CUPTIAPI completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
  CUpti_Activity *r = NULL;
  pthread_mutex_lock(&mu);
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_KERNEL:
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
      KSTRUCT *k = (KSTRUCT *)r;
      fprintf(out, "K\t%llu\t%llu\t%u\t%u\t%d,%d,%d\t%d,%d,%d\t%s\n", (unsigned long long)k->start,
              (unsigned long long)k->end, k->streamId, k->correlationId, k->gridX, k->gridY, k->gridZ,
              k->blockX, k->blockY, k->blockZ, k->name ? k->name : "?");
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      MSTRUCT *m = (MSTRUCT *)r;
      fprintf(out, "M\t%llu\t%llu\t%u\t%u\t%llu\t%d\n", (unsigned long long)m->start, (unsigned long long)m->end,
              m->streamId, m->correlationId, (unsigned long long)m->bytes, (int)m->copyKind);
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
      SSTRUCT *m = (SSTRUCT *)r;
      fprintf(out, "S\t%llu\t%llu\t%u\t%u\t%llu\n", (unsigned long long)m->start, (unsigned long long)m->end,
              m->streamId, m->correlationId, (unsigned long long)m->bytes);
      break;
    }
    case CUPTI_ACTIVITY_KIND_DRIVER: {
      CUpti_ActivityAPI *a = (CUpti_ActivityAPI *)r;
      fprintf(out, "D\t%llu\t%llu\t%u\t%u\t%u\n", (unsigned long long)a->start, (unsigned long long)a->end,
              a->threadId, a->correlationId, a->cbid);
      break;
    }
    default:
      break;
    }
  }
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped);
  if (dropped) fprintf(out, "X\tdropped\t%zu\n", dropped);
  fflush(out);
  pthread_mutex_unlock(&mu);
  free(buffer);
}

static void *flusher(void *arg) {
  for (;;) {
    usleep(200000);
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  }
  return NULL;
}

static void start(void) {
  if (started) return;
  const char *path = getenv("CUPTI_TRACE_OUT");
  if (!path) return;
  started = 1;
  out = fopen(path, "w");
  if (!out) return;
  if (cuptiActivityRegisterCallbacks(requested, completed) != CUPTI_SUCCESS) {
    fprintf(stderr, "cupti trace: register callbacks failed\n");
    return;
  }
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  if (getenv("CUPTI_TRACE_DRIVER")) cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER);
  pthread_t t;
  pthread_create(&t, NULL, flusher, NULL);
  pthread_detach(t);
  fprintf(stderr, "cupti trace: writing %s\n", path);
}

// The driver calls this when CUDA_INJECTION64_PATH names this library.
int InitializeInjection(void) {
  start();
  return 1;
}

__attribute__((constructor)) static void init(void) {
  if (getenv("CUPTI_TRACE_PRELOAD")) start();
}
