// A stand-in libnccl for cuda/collectives_test.ts: the NCCL entry points cuda/collectives.ts binds,
// with failures chosen by the environment, so that the "nccl" collective's error paths can be run
// without GPUs. Every call is logged to stderr as "fake-nccl: <name>". No memory is touched.
//   FAKE_NCCL_ALLREDUCE_RESULT   what ncclAllReduce returns (ncclResult_t; default 0 = success)
//   FAKE_NCCL_ASYNC_ERROR        what ncclCommGetAsyncError reports once an all-reduce was enqueued,
//   FAKE_NCCL_ASYNC_FROM           from its FAKE_NCCL_ASYNC_FROM-th call on (default 1)
//   FAKE_NCCL_PEER_DEAD=1        ncclCommDestroy never returns (it waits for a peer that is gone),
//                                as NCCL's does once a rank died with operations in flight
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

namespace {
int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : 0;
}
void log_call(const char* name) {
  std::fprintf(stderr, "fake-nccl: %s\n", name);
  std::fflush(stderr);
}
int g_comm;             // the communicator handle is a pointer to this
int g_allreduces = 0;   // operations enqueued so far
}  // namespace

extern "C" {
int ncclGetVersion(int* version) {
  *version = 23000;
  return 0;
}
int ncclGetUniqueId(void* id) {
  std::memset(id, 7, 128);
  return 0;
}
int ncclCommInitRank(void** comm, int, char id[128], int) {
  (void)id;
  *comm = &g_comm;
  log_call("ncclCommInitRank");
  return 0;
}
int ncclAllReduce(const void*, void*, size_t, int, int, void*, void*) {
  log_call("ncclAllReduce");
  g_allreduces++;
  return env_int("FAKE_NCCL_ALLREDUCE_RESULT");
}
int ncclBroadcast(const void*, void*, size_t, int, int, void*, void*) {
  log_call("ncclBroadcast");
  return 0;
}
int ncclCommGetAsyncError(void*, int* error) {
  static int calls = 0;
  int from = env_int("FAKE_NCCL_ASYNC_FROM");
  *error = g_allreduces > 0 && ++calls >= (from > 0 ? from : 1) ? env_int("FAKE_NCCL_ASYNC_ERROR") : 0;
  return 0;
}
int ncclCommDestroy(void*) {
  log_call("ncclCommDestroy");
  if (env_int("FAKE_NCCL_PEER_DEAD"))
    for (;;) pause();
  return 0;
}
int ncclCommAbort(void*) {
  log_call("ncclCommAbort");
  return 0;
}
const char* ncclGetErrorString(int result) {
  return result == 6 ? "remote process exited or there was a network error" : "fake NCCL error";
}
const char* ncclGetLastError(void*) { return ""; }
}
